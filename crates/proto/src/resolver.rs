//! The resolver service: the live container inventory.
