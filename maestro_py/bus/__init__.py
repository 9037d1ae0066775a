"""The tick bus: tick files, their folders and every move between them."""
