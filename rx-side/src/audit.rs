//! The receiver's audit log: the common writer (`weir_service::audit`),
//! whose slot here also keeps the outbox, for the closing `shutdown`
//! record to state its backlog (see `RxHandle::join`). The receiver's
//! evidence records are written by `pipeline::evidence`; its chain head is
//! published from [`AuditSlot::head`](weir_service::audit::AuditSlot::head).

use std::sync::Arc;

use crate::pipeline::outbox::Outbox;

/// The receiver's audit handle: the writer, and the outbox whose backlog
/// its last record states.
pub type AuditSlot = weir_service::audit::AuditSlot<Arc<Outbox>>;
