"""The patients thin webmail. Arrives with the patients issue."""
