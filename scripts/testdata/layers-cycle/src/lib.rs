//! Fixture for scripts/check-layers.py: a -> b -> c -> a, each edge in a
//! different form (nested use group, a child file's super::super, super::).
mod a;
mod b;
mod c;
