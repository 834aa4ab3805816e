//! Native client (in progress).
