//! Runtime errors → gRPC status codes kubelet branches on.

use vaina_runtime::Error;

pub fn to_status(e: Error) -> tonic::Status {
    let msg = e.chain();
    match e {
        Error::NotFound { .. } => tonic::Status::not_found(msg),
        Error::AlreadyExists { .. } => tonic::Status::already_exists(msg),
        Error::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
        Error::Failed { .. } | Error::Internal(_) => tonic::Status::internal(msg),
    }
}

pub fn unimplemented(rpc: &str) -> tonic::Status {
    tonic::Status::unimplemented(format!("{rpc} is not implemented by vaina yet"))
}
