//! X.509 device identity.
