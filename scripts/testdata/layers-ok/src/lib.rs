//! Fixture for scripts/check-layers.py: three layers, no cycle, and every
//! form that must not count as an edge (comments, strings, test code).
mod base;
mod mid;
mod top;
#[cfg(test)]
mod testonly;

pub use base::Thing;
