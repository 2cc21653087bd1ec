"""kmemdump: register chosen memory regions so an outside collector can dump just those."""
