"""Platform profiles as TOML data (design section 10); this file only makes the folder a package."""
