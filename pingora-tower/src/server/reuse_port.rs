//! Listening sockets: one shared by every thread, or one `SO_REUSEPORT` socket per thread.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections the kernel queues per socket (the standard library's default too).
const BACKLOG: i32 = 1024;

/// Binds `count` non-blocking listeners on `addr` with `SO_REUSEPORT`, so the kernel spreads
/// new connections over them (by a hash of the connection's addresses and ports). The first
/// socket picks the port when `addr` asks for `:0`; the others bind that same port.
pub(super) fn bind_reuse_port(
    addr: &str,
    count: usize,
) -> std::io::Result<(Vec<TcpListener>, SocketAddr)> {
    let mut wanted = resolve(addr)?;
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let listener = bind_one(wanted)?;
        wanted = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok((listeners, wanted))
}

fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    addr.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("address {addr:?} resolves to nothing"),
        )
    })
}

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As the standard library's `TcpListener::bind` does on Unix.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_socket_listens_on_the_port_the_first_one_got() {
        let (listeners, addr) = bind_reuse_port("127.0.0.1:0", 3).unwrap();
        assert_ne!(addr.port(), 0);
        for l in &listeners {
            assert_eq!(l.local_addr().unwrap(), addr);
        }
        // A socket without SO_REUSEPORT cannot join them.
        assert!(TcpListener::bind(addr).is_err());
    }
}
