"""Health-PKI trust: anchors, chain and revocation checks, identities, TLS contexts."""
