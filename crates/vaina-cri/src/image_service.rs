//! ImageService: answers Unimplemented until the image store lands (issue 3, next step).

use std::sync::Arc;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use tonic::{Request, Response, Status};
use vaina_runtime::Runtime;

use crate::status::unimplemented;

pub struct Service {
    _rt: Arc<Runtime>,
}

impl Service {
    pub fn new(rt: Arc<Runtime>) -> Service {
        Service { _rt: rt }
    }
}

#[tonic::async_trait]
impl ImageService for Service {
    async fn list_images(
        &self,
        _: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        Err(unimplemented("ListImages"))
    }

    async fn image_status(
        &self,
        _: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        Err(unimplemented("ImageStatus"))
    }

    async fn pull_image(
        &self,
        _: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        Err(unimplemented("PullImage"))
    }

    async fn remove_image(
        &self,
        _: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        Err(unimplemented("RemoveImage"))
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        Err(unimplemented("ImageFsInfo"))
    }
}
