//! The broker conformance suite against the in-process [`MemoryBroker`].

use std::sync::Arc;
use std::time::Duration;

use ferry_consumer::memory::MemoryBroker;
use ferry_core::{Capabilities, Sink, Subscriber};

/// One broker per case; every subscriber of a case shares it, as the
/// consumer processes of one server would.
struct Memory(MemoryBroker);

impl ferry_conformance::Broker for Memory {
    async fn sink(&self) -> Arc<dyn Sink> {
        Arc::new(self.0.clone())
    }

    async fn subscriber(&self) -> Arc<dyn Subscriber> {
        Arc::new(self.0.clone())
    }

    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }

    fn redelivery_within(&self) -> Duration {
        // A dropped message is given back at once.
        Duration::from_millis(100)
    }

    async fn restart(&self) {
        unreachable!("the memory broker does not claim persistence")
    }
}

ferry_conformance::suite!(async { Memory(MemoryBroker::new()) });
