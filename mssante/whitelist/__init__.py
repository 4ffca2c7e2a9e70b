"""The ANS whitelist (liste blanche) of operators and domains."""
