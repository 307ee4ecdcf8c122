//! The policyd service: reloads, status, explain and events for the CLI.
