"""Binary and JSON formats, one module each, shared by their writer and their reader."""

__all__: list[str] = []
