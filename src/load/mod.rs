//! The load engine (issue 3): not built yet.
