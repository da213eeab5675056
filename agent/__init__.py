"""rgt package."""
