//! (index family: to be filled by its owner; see backend/mod.rs for the pattern.)
