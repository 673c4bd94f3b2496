"""Running a recipe: what its stages share (``context``), each stage run through its technique (``stages``), the
resumable runner (``runner``) and a recipe's search alone (``search``, for ``tfopt tune``)."""
