//! The libvirt adapter: a self-healing, time-bounded connection and the
//! calls numapin makes through it.

pub mod activity;
mod calls;
mod connection;
pub mod events;

pub use activity::Activity;
pub use calls::{DomainRef, MemoryBinding, Pins, Scope};
pub use connection::{AbandonedCall, Libvirt};

/// Stops libvirt from printing every error to stderr itself: numapin
/// reports errors once, with context, through its own logging.
pub fn silence_default_error_printer() {
    virt::error::clear_error_callback();
}
