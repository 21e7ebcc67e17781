"""One thin module per pipeline stage (``aigp <stage>``); the logic lives in the library packages."""
