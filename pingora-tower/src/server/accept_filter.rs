//! [`AcceptFilter`]: connections closed as soon as they are accepted, before any byte is read
//! (so before any TLS handshake), through Pingora's `connection_filter`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use middlewares::acl::AclLayer;
use pingora_core::listeners::ConnectionFilter;

/// Which client connections the server closes at accept. Set with
/// [`ListenOptions::accept_filter`](super::ListenOptions::accept_filter) or
/// [`ProxyBuilder::acl`](crate::proxy::ProxyBuilder::acl).
///
/// A closed connection costs the server one `accept` and one `close`: nothing is read, no
/// TLS handshake starts, no connection slot of [`ClientLimits`](super::ClientLimits) is
/// taken. The client sees its connection closed with nothing written to it.
#[derive(Clone)]
pub struct AcceptFilter {
    filter: Arc<dyn ConnectionFilter>,
}

impl AcceptFilter {
    /// Closes connections from the addresses `acl` denies by address alone (see
    /// [`AclLayer::denies_at_accept`]). The requests of every other connection still go
    /// through the layer, which must also be in the stack to check them.
    pub fn acl(acl: &AclLayer) -> Self {
        AcceptFilter {
            filter: Arc::new(AclFilter(acl.clone())),
        }
    }

    /// Any Pingora connection filter.
    pub fn from_filter(filter: Arc<dyn ConnectionFilter>) -> Self {
        AcceptFilter { filter }
    }

    pub(super) fn into_inner(self) -> Arc<dyn ConnectionFilter> {
        self.filter
    }
}

impl fmt::Debug for AcceptFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AcceptFilter").field(&self.filter).finish()
    }
}

/// The access list as a Pingora connection filter.
#[derive(Debug)]
struct AclFilter(AclLayer);

#[async_trait]
impl ConnectionFilter for AclFilter {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        // No address (not a TCP peer): nothing to decide on; the layer still checks requests.
        addr.is_none_or(|addr| !self.0.denies_at_accept(addr.ip()))
    }
}
