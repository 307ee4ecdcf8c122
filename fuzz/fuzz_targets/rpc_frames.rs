//! A Unix socket's byte stream, as every daemon reads it: length-delimited
//! frames (the real codec, with its maximum frame size), each decoded as
//! the request of every service (what a server reads from any peer its
//! credential check admits) and as the reply of every service (what a
//! client reads).
#![no_main]

use std::pin::Pin;

use libfuzzer_sys::fuzz_target;
use proto::{
    loader::{LoaderRequest, LoaderResponse},
    policyd::{PolicydRequest, PolicydResponse},
    resolver::{ResolverRequest, ResolverResponse},
    transport::{Frames, JsonCodec, Service},
};
use serde::de::DeserializeOwned;
use tarpc::{tokio_serde::Deserializer, ClientMessage, Response};
use tokio_util::{bytes::BytesMut, codec::Decoder};

fn decode_as<Item: DeserializeOwned>(frame: &BytesMut) {
    let mut json = JsonCodec::<Item, ()>::default();
    let _ = Pin::new(&mut json).deserialize(frame);
}

fuzz_target!(|data: &[u8]| {
    // The largest limits any server reads with.
    let mut frames = Frames::server(Service::Loader);
    let mut stream = BytesMut::from(data);
    // As a connection does: frames until the stream ends or one is bad.
    while let Ok(Some(frame)) = frames.decode_eof(&mut stream) {
        decode_as::<ClientMessage<LoaderRequest>>(&frame);
        decode_as::<ClientMessage<ResolverRequest>>(&frame);
        decode_as::<ClientMessage<PolicydRequest>>(&frame);
        decode_as::<Response<LoaderResponse>>(&frame);
        decode_as::<Response<ResolverResponse>>(&frame);
        decode_as::<Response<PolicydResponse>>(&frame);
    }
});
