//! Serving a stand-in for a daemon (the in-memory loader, a test's fake
//! resolver) on a Unix socket the way the daemons serve: proto's accept
//! loop, root peers only, each request on a task of its own.

/// Serves `$server` (a tarpc `Serve` value, e.g. `loader.serve()`) as
/// `$service` (a `proto::transport::Service`) on the Unix socket at
/// `$socket`, from the current tokio runtime. Evaluates to the bind's
/// `std::io::Result<()>`.
///
/// A macro, not a function: requests are spawned, and that their futures
/// are `Send` is only known for a concrete server type.
#[macro_export]
macro_rules! serve_root_only {
    ($socket:expr, $service:expr, $server:expr $(,)?) => {{
        let server = $server;
        $crate::rpc::private::transport::bind($socket, 0o600, None).map(|listener| {
            $crate::rpc::private::tokio::spawn($crate::rpc::private::transport::serve(
                listener,
                $crate::rpc::private::transport::PeerPolicy::RootOnly,
                $service,
                move |channel, _| {
                    $crate::rpc::private::StreamExt::for_each(
                        $crate::rpc::private::Channel::execute(channel, server.clone()),
                        $crate::rpc::private::transport::spawn_request,
                    )
                },
            ));
        })
    }};
}

/// What [`serve_root_only!`] expands to uses, whatever its caller imports.
#[doc(hidden)]
pub mod private {
    pub use futures::StreamExt;
    pub use proto::transport;
    pub use tarpc::server::Channel;
    pub use tokio;
}
