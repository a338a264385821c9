//! What the adapter crates (the brokers' sinks and subscribers) would each
//! write out the same way.

/// Implements [`Sink`](crate::Sink) for an adapter's sink `$sink` that
/// only names itself `$name` and delivers a batch with its own
/// `async fn $deliver(&self, batch: &[Message]) -> Vec<Delivery>` (whose
/// future is `Send`); the trait's other methods keep their defaults.
///
/// ```ignore
/// ferry_core::impl_sink!(RedisSink, "redis", deliver_batch);
/// ```
#[macro_export]
macro_rules! impl_sink {
    ($sink:ty, $name:literal, $deliver:ident) => {
        impl $crate::Sink for $sink {
            fn name(&self) -> &str {
                $name
            }

            fn deliver<'a>(
                &'a self,
                batch: &'a [$crate::Message],
            ) -> $crate::BoxFuture<'a, ::std::vec::Vec<$crate::Delivery>> {
                ::std::boxed::Box::pin(self.$deliver(batch))
            }
        }
    };
}

/// Implements `fmt::Debug` for an adapter's sink or subscriber `$type`: a
/// struct of that name with the given fields, each `name: expression`
/// (`$this` standing for the value shown), and `..` for what is left out.
///
/// ```ignore
/// ferry_core::impl_debug!(RedisSink, |sink| server: sink.config.redacted_url(),
///     stream_prefix: sink.config.stream_prefix);
/// ```
#[macro_export]
macro_rules! impl_debug {
    ($type:ident, |$this:ident| $($field:ident: $value:expr),+ $(,)?) => {
        impl ::std::fmt::Debug for $type {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                let $this = self;
                f.debug_struct(stringify!($type))
                    $(.field(stringify!($field), &$value))+
                    .finish_non_exhaustive()
            }
        }
    };
}
