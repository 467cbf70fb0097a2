//! Amazon S3 (and S3-compatible servers) as a destination, through multipart uploads: the
//! upload begins with CreateMultipartUpload (carrying the object's metadata) and its upload ID
//! is the session blobway records; each chunk is one UploadPart (part number = chunk index + 1,
//! Content-MD5); ListParts tells which parts the upload holds, as Get Block List does for
//! Azure; CompleteMultipartUpload makes the object visible at once. Objects of one chunk go up
//! with one PutObject. Store to store (`--transfer`), from an S3 source on the same endpoint,
//! each chunk is one UploadPartCopy and a one-chunk object one CopyObject, both pinned to the
//! planned ETag (`x-amz-copy-source-if-match`): the destination's credentials read the source.
//!
//! S3 checks Content-MD5 on every server and emulator, while a CRC-64 part checksum must be
//! announced when the upload begins and repeated at completion, which S3-compatible servers
//! handle unevenly; so parts always carry MD5, whatever `--checksum` asks of Azure.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;

use super::s3::{S3Store, lowercase};
use super::{
    BlockRef, Checksum, ChecksumKind, CopyFrom, CopyOrigin, DestObject, ErrorClass, ObjectMeta,
    ObjectSink, PlannedBlock, SinkLimits, StoreError, StoreResult, Upload,
};

const MIB: u64 = 1 << 20;

/// S3's multipart limits: parts of 5 MiB to 5 GiB (the last may be smaller), at most 10,000
/// of them; a single PutObject takes up to 5 GiB.
pub const LIMITS: SinkLimits = SinkLimits {
    max_block: 5 * 1024 * MIB,
    max_blocks: 10_000,
    min_block: 5 * MIB,
    granularity: 1,
    max_single_put: 5 * 1024 * MIB,
    sequential: false,
    shared_blocks: true,
    max_object_size: u64::MAX,
};

impl S3Store {
    fn upload_deadline(&self, bytes: u64) -> std::time::Duration {
        super::StoreSettings {
            stall_timeout: self.stall_timeout,
        }
        .upload_deadline(bytes)
    }

    /// The multipart upload ID recorded for `upload`.
    fn session<'a>(&self, upload: Upload<'a>) -> StoreResult<&'a str> {
        upload.recorded_session(format_args!("s3://{}/{}", self.bucket, upload.key))
    }

    /// The error of a request naming an upload ID. Some S3-compatible servers (s3s-fs) answer
    /// AccessDenied, not NoSuchUpload, for an upload that was completed or aborted; the
    /// credentials already created that upload, so the upload is what is gone. (Were it
    /// really a permission, starting over fails at CreateMultipartUpload with the same 403.)
    fn upload_error<E>(
        &self,
        err: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
        what: &str,
        key: &str,
    ) -> StoreError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        use aws_sdk_s3::error::ProvideErrorMetadata as _;
        let refused_upload = err.code() == Some("AccessDenied");
        let error = self.error(err, what, key);
        if refused_upload {
            StoreError::new(
                ErrorClass::UploadLost,
                error.status,
                format!(
                    "{what} s3://{}/{key}: the store refused the upload ID (completed, aborted \
                     or expired); the upload is checked and starts over if needed",
                    self.bucket
                ),
            )
        } else {
            error
        }
    }

    /// Every part the upload holds: part number → (size, ETag).
    async fn parts(&self, key: &str, upload_id: &str) -> StoreResult<BTreeMap<i32, (u64, String)>> {
        let mut parts = BTreeMap::new();
        let mut marker: Option<String> = None;
        loop {
            let call = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.clone())
                .send();
            let out = tokio::time::timeout(self.stall_timeout, call)
                .await
                .map_err(|_| self.stalled("ListParts", key))?
                .map_err(|e| self.upload_error(e, "ListParts", key))?;
            for part in out.parts() {
                if let Some(number) = part.part_number() {
                    let size = part.size().unwrap_or(0).max(0) as u64;
                    let etag = part.e_tag().unwrap_or_default().to_string();
                    parts.insert(number, (size, etag));
                }
            }
            match (out.is_truncated(), out.next_part_number_marker()) {
                (Some(true), Some(next)) if marker.as_deref() != Some(next) => {
                    marker = Some(next.to_string());
                }
                _ => break,
            }
        }
        Ok(parts)
    }

    async fn head_object(&self, key: &str) -> StoreResult<Option<DestObject>> {
        let call = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send();
        match tokio::time::timeout(self.stall_timeout, call)
            .await
            .map_err(|_| self.stalled("HEAD", key))?
        {
            Ok(out) => Ok(Some(DestObject {
                size: out.content_length().unwrap_or(0).max(0) as u64,
                meta: lowercase(out.metadata()),
            })),
            Err(e) => {
                let err = self.error(e, "HEAD", key);
                if err.class == ErrorClass::NotFound {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }
}

/// A conditional write refused with 412 (`If-None-Match: *`): the object is already there.
fn exists_if_refused(upload: Upload<'_>, error: StoreError) -> StoreError {
    if upload.create_only && error.status == Some(412) {
        StoreError::exists(format_args!("`{}`", upload.key))
    } else {
        error
    }
}

fn part_number(index: u32) -> StoreResult<i32> {
    i32::try_from(u64::from(index) + 1)
        .ok()
        .filter(|n| *n <= 10_000)
        .ok_or_else(|| {
            StoreError::new(
                ErrorClass::Invalid,
                None,
                format!("chunk {index} is beyond S3's 10,000 parts"),
            )
        })
}

fn content_md5(checksum: Checksum, data: &[u8]) -> String {
    let digest = match checksum {
        Checksum::Md5(digest) => digest,
        Checksum::Crc64(_) => match Checksum::of(ChecksumKind::Md5, data) {
            Checksum::Md5(digest) => digest,
            Checksum::Crc64(_) => unreachable!("an MD5 checksum is MD5"),
        },
    };
    BASE64.encode(digest)
}

impl S3Store {
    /// What a failed copy request (UploadPartCopy, CopyObject) means: a source key that is
    /// gone means the source changed; access denied or a call the server does not implement
    /// is a refusal of the route ([`StoreError::refusing_copy`]); the rest as any request.
    fn copy_error<E>(
        &self,
        err: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
        what: &str,
        key: &str,
        from: CopyFrom<'_>,
    ) -> StoreError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        use aws_sdk_s3::error::ProvideErrorMetadata as _;
        let code = err.code().map(str::to_string);
        classify_copy_error(self.error(err, what, key), code.as_deref(), from)
    }
}

fn classify_copy_error(error: StoreError, code: Option<&str>, from: CopyFrom<'_>) -> StoreError {
    match code {
        Some("NoSuchKey" | "NoSuchVersion") => StoreError::source_changed(from.key),
        // An archived source object (Glacier) must be restored first: it fails, the route
        // stands.
        Some("InvalidObjectState") => error,
        Some("AccessDenied" | "NotImplemented") => error.refusing_copy(),
        _ if matches!(error.status, Some(403 | 501)) => error.refusing_copy(),
        _ => error,
    }
}

/// The `x-amz-copy-source` of a copy: the source bucket and key, the key percent-encoded
/// (its `/` kept), as S3 expects.
fn copy_source(from: CopyFrom<'_>) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const KEY: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let bucket = match from.origin {
        CopyOrigin::S3 { bucket, .. } => bucket.as_str(),
        // Never offered to an S3 destination (`copies_from`).
        CopyOrigin::Azure { .. } => "",
    };
    let key = utf8_percent_encode(from.key, KEY);
    match from.version {
        Some(version) => format!(
            "{bucket}/{key}?versionId={}",
            utf8_percent_encode(version, NON_ALPHANUMERIC)
        ),
        None => format!("{bucket}/{key}"),
    }
}

fn s3_class(class: super::rules::StorageClass) -> aws_sdk_s3::types::StorageClass {
    use super::rules::StorageClass as Class;
    use aws_sdk_s3::types::StorageClass as S3;
    match class {
        Class::Standard => S3::Standard,
        Class::StandardIa => S3::StandardIa,
        Class::OnezoneIa => S3::OnezoneIa,
        Class::IntelligentTiering => S3::IntelligentTiering,
        Class::GlacierIr => S3::GlacierIr,
        Class::Glacier => S3::Glacier,
        Class::DeepArchive => S3::DeepArchive,
    }
}

fn user_metadata(meta: &ObjectMeta) -> Option<HashMap<String, String>> {
    (!meta.pairs.is_empty()).then(|| {
        meta.pairs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    })
}

#[async_trait]
impl ObjectSink for S3Store {
    fn limits(&self) -> SinkLimits {
        LIMITS
    }

    fn checksum_kind(&self, _requested: ChecksumKind) -> ChecksumKind {
        ChecksumKind::Md5
    }

    fn meta_rules(&self) -> super::rules::MetaRules {
        super::rules::MetaRules::S3
    }

    fn listing_has_metadata(&self) -> bool {
        false
    }

    async fn prepare(&self) -> StoreResult<()> {
        let head = self.client.head_bucket().bucket(&self.bucket).send();
        let err = match tokio::time::timeout(self.stall_timeout, head)
            .await
            .map_err(|_| self.stalled("HEAD bucket", ""))?
        {
            Ok(_) => return Ok(()),
            Err(e) => self.error(e, "HEAD bucket", ""),
        };
        if err.class != ErrorClass::NotFound {
            return Err(err);
        }
        let region = self.client.config().region().map(|r| r.to_string());
        let mut create = self.client.create_bucket().bucket(&self.bucket);
        if let Some(region) = region.filter(|r| r != "us-east-1") {
            create = create.create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(region.as_str().into())
                    .build(),
            );
        }
        match tokio::time::timeout(self.stall_timeout, create.send())
            .await
            .map_err(|_| self.stalled("CreateBucket", ""))?
        {
            Ok(_) => Ok(()),
            Err(e) => {
                use aws_sdk_s3::error::ProvideErrorMetadata as _;
                let code = e.code().map(str::to_string);
                let err = self.error(e, "CreateBucket", "");
                match code.as_deref() {
                    // Created meanwhile by this account.
                    Some("BucketAlreadyOwnedByYou") => Ok(()),
                    Some("BucketAlreadyExists") => Err(StoreError::new(
                        ErrorClass::Permission,
                        err.status,
                        format!(
                            "the bucket name {} is taken by another AWS account; choose another \
                             destination bucket",
                            self.bucket
                        ),
                    )),
                    _ if err.status == Some(409) => Ok(()),
                    _ => Err(err),
                }
            }
        }
    }

    async fn begin(&self, upload: Upload<'_>, meta: &ObjectMeta) -> StoreResult<Option<String>> {
        // The condition of --if-exists skip|fail goes on CompleteMultipartUpload.
        let key = upload.key;
        let call = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .set_storage_class(upload.storage_class.map(s3_class))
            .set_tagging(crate::store::tags::encode(&meta.tags))
            .set_content_type(meta.content_type.clone())
            .set_content_encoding(meta.content_encoding.clone())
            .set_cache_control(meta.cache_control.clone())
            .set_metadata(user_metadata(meta))
            .send();
        let out = tokio::time::timeout(self.stall_timeout, call)
            .await
            .map_err(|_| self.stalled("CreateMultipartUpload", key))?
            .map_err(|e| self.error(e, "CreateMultipartUpload", key))?;
        let id = out.upload_id().ok_or_else(|| {
            StoreError::transient(format!(
                "CreateMultipartUpload s3://{}/{key} answered without an upload ID",
                self.bucket
            ))
        })?;
        Ok(Some(id.to_string()))
    }

    async fn put_block(
        &self,
        upload: Upload<'_>,
        block: BlockRef<'_>,
        data: Bytes,
    ) -> StoreResult<()> {
        let upload_id = self.session(upload)?;
        let len = data.len() as u64;
        let md5 = content_md5(block.checksum, &data);
        let call = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(upload.key)
            .upload_id(upload_id)
            .part_number(part_number(block.index)?)
            .content_length(len as i64)
            .content_md5(md5)
            .body(ByteStream::from(data))
            .send();
        tokio::time::timeout(self.upload_deadline(len), call)
            .await
            .map_err(|_| self.stalled("UploadPart", upload.key))?
            .map_err(|e| self.upload_error(e, "UploadPart", upload.key))?;
        Ok(())
    }

    fn storage_classes(&self) -> bool {
        true
    }

    fn tag_rules(&self) -> Option<crate::store::tags::TagRules> {
        Some(crate::store::tags::TagRules::S3)
    }

    fn copies_from(&self, origin: &CopyOrigin) -> Option<super::CopyWay> {
        matches!(origin, CopyOrigin::S3 { endpoint, .. } if *endpoint == self.endpoint)
            .then_some(super::CopyWay::Native)
    }

    async fn copy_block(
        &self,
        upload: Upload<'_>,
        index: u32,
        _id: &str,
        from: CopyFrom<'_>,
    ) -> StoreResult<Option<u64>> {
        let upload_id = self.session(upload)?;
        let len = from.range.end - from.range.start;
        let call = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(upload.key)
            .upload_id(upload_id)
            .part_number(part_number(index)?)
            .copy_source(copy_source(from))
            .copy_source_if_match(from.etag)
            .copy_source_range(format!(
                "bytes={}-{}",
                from.range.start,
                from.range.end.saturating_sub(1)
            ))
            .send();
        let out = tokio::time::timeout(self.upload_deadline(len), call)
            .await
            .map_err(|_| self.stalled("UploadPartCopy", upload.key))?
            // AccessDenied here is the source refused to the destination's credentials (a
            // policy): a refusal of the route, not of the upload ID (`upload_error`).
            .map_err(|e| self.copy_error(e, "UploadPartCopy", upload.key, from))?;
        if out.copy_part_result().is_none() {
            return Err(StoreError::transient(format!(
                "UploadPartCopy s3://{}/{} answered without a result",
                self.bucket, upload.key
            )));
        }
        Ok(None)
    }

    async fn copy_whole(
        &self,
        upload: Upload<'_>,
        from: CopyFrom<'_>,
        meta: &ObjectMeta,
    ) -> StoreResult<()> {
        let key = upload.key;
        let len = from.range.end - from.range.start;
        let call = self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .key(key)
            .set_storage_class(upload.storage_class.map(s3_class))
            .copy_source(copy_source(from))
            .copy_source_if_match(from.etag)
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            // The tags blobway read (--copy-tags), or none, as every other route writes
            // (copying the source's needs more permissions).
            .tagging_directive(aws_sdk_s3::types::TaggingDirective::Replace)
            .set_tagging(crate::store::tags::encode(&meta.tags))
            .set_content_type(meta.content_type.clone())
            .set_content_encoding(meta.content_encoding.clone())
            .set_cache_control(meta.cache_control.clone())
            .set_metadata(user_metadata(meta))
            .set_if_none_match(upload.create_only.then(|| "*".to_string()))
            .send();
        let out = tokio::time::timeout(self.upload_deadline(len), call)
            .await
            .map_err(|_| self.stalled("CopyObject", key))?;
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                let error = self.copy_error(e, "CopyObject", key, from);
                // A 412 answers either condition: the source's version, or (create-only)
                // the destination's emptiness; an object there now tells which (one that
                // cannot be looked at leaves the source's reading).
                if upload.create_only
                    && error.status == Some(412)
                    && matches!(self.head_object(key).await, Ok(Some(_)))
                {
                    return Err(StoreError::exists(format_args!("`{key}`")));
                }
                return Err(error);
            }
        };
        if out.copy_object_result().is_none() {
            return Err(StoreError::transient(format!(
                "CopyObject s3://{}/{key} answered without a result",
                self.bucket
            )));
        }
        Ok(())
    }

    async fn missing_blocks(
        &self,
        upload: Upload<'_>,
        blocks: &[PlannedBlock],
    ) -> StoreResult<Vec<u32>> {
        let upload_id = self.session(upload)?;
        let parts = self.parts(upload.key, upload_id).await?;
        Ok(blocks
            .iter()
            .filter(|b| {
                part_number(b.index)
                    .ok()
                    .and_then(|n| parts.get(&n))
                    .is_none_or(|(size, _)| *size != b.size)
            })
            .map(|b| b.index)
            .collect())
    }

    async fn commit(
        &self,
        upload: Upload<'_>,
        blocks: &[PlannedBlock],
        _meta: &ObjectMeta,
    ) -> StoreResult<()> {
        // The metadata went with CreateMultipartUpload; completion names every part with the
        // ETag S3 gave it.
        let upload_id = self.session(upload)?;
        let listed = self.parts(upload.key, upload_id).await?;
        let mut parts = Vec::with_capacity(blocks.len());
        for block in blocks {
            let number = part_number(block.index)?;
            let etag = listed.get(&number).map(|(_, etag)| etag.clone());
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(etag.filter(|e| !e.is_empty()))
                    .build(),
            );
        }
        let call = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(upload.key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .set_if_none_match(upload.create_only.then(|| "*".to_string()))
            .send();
        // S3 may take a while to assemble a large object.
        let deadline = self.stall_timeout * 5;
        tokio::time::timeout(deadline, call)
            .await
            .map_err(|_| self.stalled("CompleteMultipartUpload", upload.key))?
            .map_err(|e| {
                exists_if_refused(
                    upload,
                    self.upload_error(e, "CompleteMultipartUpload", upload.key),
                )
            })?;
        Ok(())
    }

    async fn uploads_between(
        &self,
        key: &str,
        window: std::ops::Range<i64>,
    ) -> StoreResult<Vec<String>> {
        let mut found = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let call = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(key)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send();
            let out = tokio::time::timeout(self.stall_timeout, call)
                .await
                .map_err(|_| self.stalled("ListMultipartUploads", key))?
                .map_err(|e| self.error(e, "ListMultipartUploads", key))?;
            for upload in out.uploads() {
                // An upload without a time is nobody's to abort.
                let initiated_ms = upload
                    .initiated()
                    .map(|t| t.secs() * 1000 + i64::from(t.subsec_nanos() / 1_000_000));
                if upload.key() == Some(key)
                    && initiated_ms.is_some_and(|at| window.contains(&at))
                    && let Some(id) = upload.upload_id()
                {
                    found.push(id.to_string());
                }
            }
            match (
                out.is_truncated(),
                out.next_key_marker(),
                out.next_upload_id_marker(),
            ) {
                (Some(true), Some(k), Some(u))
                    if key_marker.as_deref() != Some(k) || id_marker.as_deref() != Some(u) =>
                {
                    key_marker = Some(k.to_string());
                    id_marker = Some(u.to_string());
                }
                _ => break,
            }
        }
        Ok(found)
    }

    async fn abort(&self, upload: Upload<'_>) -> StoreResult<()> {
        let Some(upload_id) = upload.session else {
            return Ok(());
        };
        let call = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(upload.key)
            .upload_id(upload_id)
            .send();
        match tokio::time::timeout(self.stall_timeout, call)
            .await
            .map_err(|_| self.stalled("AbortMultipartUpload", upload.key))?
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = self.upload_error(e, "AbortMultipartUpload", upload.key);
                if matches!(err.class, ErrorClass::UploadLost | ErrorClass::NotFound) {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn put_whole(
        &self,
        upload: Upload<'_>,
        data: Bytes,
        checksum: Checksum,
        meta: &ObjectMeta,
    ) -> StoreResult<()> {
        let key = upload.key;
        let len = data.len() as u64;
        let md5 = content_md5(checksum, &data);
        let call = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .set_storage_class(upload.storage_class.map(s3_class))
            .set_tagging(crate::store::tags::encode(&meta.tags))
            .content_length(len as i64)
            .content_md5(md5)
            .set_content_type(meta.content_type.clone())
            .set_content_encoding(meta.content_encoding.clone())
            .set_cache_control(meta.cache_control.clone())
            .set_metadata(user_metadata(meta))
            .body(ByteStream::from(data))
            .set_if_none_match(upload.create_only.then(|| "*".to_string()))
            .send();
        tokio::time::timeout(self.upload_deadline(len), call)
            .await
            .map_err(|_| self.stalled("PutObject", key))?
            .map_err(|e| exists_if_refused(upload, self.error(e, "PutObject", key)))?;
        Ok(())
    }

    async fn head(&self, key: &str) -> StoreResult<Option<DestObject>> {
        self.head_object(key).await
    }

    async fn list_existing(&self, prefix: &str) -> StoreResult<BTreeMap<String, DestObject>> {
        // A listing carries sizes but no user metadata: the planner looks at the objects
        // that may be identical (see `listing_has_metadata`).
        Ok(super::ObjectSource::list(self, prefix, false)
            .await?
            .into_iter()
            .map(|object| {
                let found = DestObject {
                    size: object.size,
                    meta: BTreeMap::new(),
                };
                (object.key, found)
            })
            .collect())
    }

    async fn list_existing_page(
        &self,
        prefix: &str,
        token: Option<String>,
    ) -> StoreResult<(Vec<(String, DestObject)>, Option<String>)> {
        // The token is the last key listed (`StartAfter`).
        let listed = super::ObjectSource::list_after(self, prefix, token.as_deref(), 1000).await?;
        let objects = listed
            .objects
            .into_iter()
            .map(|object| {
                let found = DestObject {
                    size: object.size,
                    meta: BTreeMap::new(),
                };
                (object.key, found)
            })
            .collect();
        Ok((objects, listed.next))
    }
}
