//! Edges under the control plane.
