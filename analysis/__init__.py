"""Pure numerical code for Phaseboard: torch + numpy, never imports ``server``."""
