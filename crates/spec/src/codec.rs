//! The gRPC codec of the build services: prost's encoding, with a large
//! message decoded off the async runtime's turn. A `BuildRequest` of
//! hundreds of thousands of outputs takes a while to decode, and tonic
//! decodes on the runtime thread that polls the call: two such requests
//! on a two-core host stall every other call of the server (a castore
//! `Stat` waited for them). A message of [`LARGE`] bytes or more is decoded
//! inside [`tokio::task::block_in_place`], which hands the thread's other
//! tasks to another worker first; smaller ones decode inline as prost's
//! codec does.

use std::marker::PhantomData;

use bytes::Buf;
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// Messages from this size on are decoded with the runtime told that the
/// thread blocks.
pub const LARGE: usize = 256 << 10;

/// Prost's codec for `T` out and `U` in, decoding large messages as the
/// module says. Used by the generated build service clients and servers.
#[derive(Debug, Clone)]
pub struct BuildCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for BuildCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for BuildCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = LargeDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        LargeDecoder(PhantomData)
    }
}

/// Decodes a `U`, off the runtime's turn when it is large.
#[derive(Debug, Clone)]
pub struct LargeDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for LargeDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let decode = |buf: &mut DecodeBuf<'_>| {
            U::decode(buf)
                .map(Some)
                .map_err(|e| Status::internal(e.to_string()))
        };
        if buf.remaining() >= LARGE && on_multi_thread_runtime() {
            tokio::task::block_in_place(|| decode(buf))
        } else {
            decode(buf)
        }
    }
}

/// Whether this thread is a worker of a multi-threaded tokio runtime, the
/// only place `block_in_place` may be called.
fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}
