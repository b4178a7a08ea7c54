"""Stage one: teachers, devices and the caching job (uni cache-teachers)."""
