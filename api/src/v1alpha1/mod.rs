//! kdps.io/v1alpha1 resource types.
