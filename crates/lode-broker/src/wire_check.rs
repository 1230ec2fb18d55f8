//! Bounds checks on request bodies, run before `kafka-protocol` decodes them.
//!
//! `kafka-protocol` reserves room for every array from the element count it reads off the
//! wire before it decodes a single element. A few bytes claiming 2^31 elements therefore
//! make it ask for more memory than exists, and a failed allocation aborts the process
//! (it is not a panic that could be caught). [`check_request`] walks a body along the exact
//! field layout of its API version first and refuses every array, string and bytes length
//! the remaining bytes cannot hold, malformed varints and tagged-field sections, and
//! trailing bytes. Once a body passes, every count `kafka-protocol` reads is bounded by the
//! size of the body itself.
//!
//! The layouts are data: one [`Schema`] per API, a tree of [`Field`]s with their version
//! ranges, transcribed from Apache Kafka's
//! `clients/src/main/resources/common/message/<Name>Request.json`. Supporting another API
//! or version means adding or widening a table; the walker does not change.

use std::fmt;

/// An inclusive range of API versions. `min > max` is the empty range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    /// Lowest version in the range.
    pub min: i16,
    /// Highest version in the range.
    pub max: i16,
}

impl Versions {
    /// No version at all (for "not nullable" and "never flexible").
    pub const NONE: Versions = Versions { min: 0, max: -1 };

    /// Whether `version` is in the range.
    #[must_use]
    pub const fn contains(self, version: i16) -> bool {
        self.min <= version && version <= self.max
    }
}

/// `"N+"` in Kafka's schema files.
const fn from(min: i16) -> Versions {
    Versions { min, max: i16::MAX }
}

/// `"N-M"` (or `"N"` as `range(N, N)`) in Kafka's schema files.
const fn range(min: i16, max: i16) -> Versions {
    Versions { min, max }
}

/// The wire type of a field.
#[derive(Debug, Clone, Copy)]
pub enum Type {
    /// 1 byte.
    Int8,
    /// 2 bytes, big-endian.
    Int16,
    /// 4 bytes, big-endian.
    Int32,
    /// 8 bytes, big-endian.
    Int64,
    /// 2 bytes, big-endian.
    Uint16,
    /// 8 bytes, IEEE 754.
    Float64,
    /// 1 byte.
    Bool,
    /// 16 bytes.
    Uuid,
    /// Int16 length (-1 null), or in flexible versions an unsigned varint length + 1
    /// (0 null); then that many bytes.
    String,
    /// Int32 length (-1 null), or in flexible versions an unsigned varint length + 1
    /// (0 null); then that many bytes.
    Bytes,
    /// A record set: laid out as [`Type::Bytes`] (the records themselves are checked later).
    Records,
    /// Int32 element count (-1 null), or in flexible versions an unsigned varint count + 1
    /// (0 null); then the elements.
    Array(&'static Type),
    /// The fields in order; in flexible versions followed by a tagged-field section.
    Struct(&'static [Field]),
}

/// A tagged field: where it lives in the tagged section instead of inline.
#[derive(Debug, Clone, Copy)]
pub struct Tag {
    /// Its tag number.
    pub tag: u32,
    /// The versions in which it is tagged (`"taggedVersions"`).
    pub versions: Versions,
}

/// One field of a request or of a struct inside it.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Its name, as in the error paths (`snake_case`, like `kafka-protocol`'s fields).
    pub name: &'static str,
    /// Its wire type.
    pub ty: Type,
    /// The versions it is present in (`"versions"`).
    pub versions: Versions,
    /// The versions in which it may be null (`"nullableVersions"`).
    pub nullable: Versions,
    /// Set when the field is tagged (`"tag"`, `"taggedVersions"`).
    pub tag: Option<Tag>,
}

/// A field present in `versions`, not nullable, not tagged.
const fn field(name: &'static str, ty: Type, versions: Versions) -> Field {
    Field {
        name,
        ty,
        versions,
        nullable: Versions::NONE,
        tag: None,
    }
}

impl Field {
    const fn nullable(mut self, versions: Versions) -> Field {
        self.nullable = versions;
        self
    }

    const fn tagged(mut self, tag: u32, versions: Versions) -> Field {
        self.tag = Some(Tag { tag, versions });
        self
    }

    /// Whether the field sits inline (not in the tagged section) at `version`.
    fn inline_at(&self, version: i16) -> bool {
        self.versions.contains(version) && !self.tagged_at(version)
    }

    fn tagged_at(&self, version: i16) -> bool {
        self.versions.contains(version) && self.tag.is_some_and(|t| t.versions.contains(version))
    }
}

/// The request layout of one API.
#[derive(Debug)]
pub struct Schema {
    /// The API's name.
    pub name: &'static str,
    /// Its API key.
    pub api_key: i16,
    /// The versions [`check_request`] accepts: the ones the broker advertises and decodes.
    /// The field tables are transcribed for every version in the JSON, but only these were
    /// verified against `kafka-protocol`'s encoder.
    pub versions: Versions,
    /// The flexible versions (`"flexibleVersions"`): compact lengths and tagged fields.
    pub flexible: Versions,
    /// The top-level fields.
    pub fields: &'static [Field],
}

// The tables. Field order, version ranges and nullability follow the JSON files exactly;
// names are the JSON names in snake_case.

/// ProduceRequest.json.
static PRODUCE: Schema = Schema {
    name: "Produce",
    api_key: 0,
    versions: range(3, 9),
    flexible: from(9),
    fields: &[
        field("transactional_id", Type::String, from(3)).nullable(from(3)),
        field("acks", Type::Int16, from(0)),
        field("timeout_ms", Type::Int32, from(0)),
        field(
            "topic_data",
            Type::Array(&Type::Struct(&[
                field("name", Type::String, from(0)),
                field(
                    "partition_data",
                    Type::Array(&Type::Struct(&[
                        field("index", Type::Int32, from(0)),
                        field("records", Type::Records, from(0)).nullable(from(0)),
                    ])),
                    from(0),
                ),
            ])),
            from(0),
        ),
    ],
};

/// FetchRequest.json.
static FETCH: Schema = Schema {
    name: "Fetch",
    api_key: 1,
    versions: range(4, 12),
    flexible: from(12),
    fields: &[
        field("cluster_id", Type::String, from(12))
            .nullable(from(12))
            .tagged(0, from(12)),
        field("replica_id", Type::Int32, range(0, 14)),
        field(
            "replica_state",
            Type::Struct(&[
                field("replica_id", Type::Int32, from(15)),
                field("replica_epoch", Type::Int64, from(15)),
            ]),
            from(15),
        )
        .tagged(1, from(15)),
        field("max_wait_ms", Type::Int32, from(0)),
        field("min_bytes", Type::Int32, from(0)),
        field("max_bytes", Type::Int32, from(3)),
        field("isolation_level", Type::Int8, from(4)),
        field("session_id", Type::Int32, from(7)),
        field("session_epoch", Type::Int32, from(7)),
        field(
            "topics",
            Type::Array(&Type::Struct(&[
                field("topic", Type::String, range(0, 12)),
                field("topic_id", Type::Uuid, from(13)),
                field(
                    "partitions",
                    Type::Array(&Type::Struct(&[
                        field("partition", Type::Int32, from(0)),
                        field("current_leader_epoch", Type::Int32, from(9)),
                        field("fetch_offset", Type::Int64, from(0)),
                        field("last_fetched_epoch", Type::Int32, from(12)),
                        field("log_start_offset", Type::Int64, from(5)),
                        field("partition_max_bytes", Type::Int32, from(0)),
                        field("replica_directory_id", Type::Uuid, from(17)).tagged(0, from(17)),
                    ])),
                    from(0),
                ),
            ])),
            from(0),
        ),
        field(
            "forgotten_topics_data",
            Type::Array(&Type::Struct(&[
                field("topic", Type::String, range(7, 12)),
                field("topic_id", Type::Uuid, from(13)),
                field("partitions", Type::Array(&Type::Int32), from(7)),
            ])),
            from(7),
        ),
        field("rack_id", Type::String, from(11)),
    ],
};

/// ListOffsetsRequest.json.
static LIST_OFFSETS: Schema = Schema {
    name: "ListOffsets",
    api_key: 2,
    versions: range(1, 7),
    flexible: from(6),
    fields: &[
        field("replica_id", Type::Int32, from(0)),
        field("isolation_level", Type::Int8, from(2)),
        field(
            "topics",
            Type::Array(&Type::Struct(&[
                field("name", Type::String, from(0)),
                field(
                    "partitions",
                    Type::Array(&Type::Struct(&[
                        field("partition_index", Type::Int32, from(0)),
                        field("current_leader_epoch", Type::Int32, from(4)),
                        field("timestamp", Type::Int64, from(0)),
                        field("max_num_offsets", Type::Int32, range(0, 0)),
                    ])),
                    from(0),
                ),
            ])),
            from(0),
        ),
        field("timeout_ms", Type::Int32, from(10)),
    ],
};

/// MetadataRequest.json.
static METADATA: Schema = Schema {
    name: "Metadata",
    api_key: 3,
    versions: range(0, 12),
    flexible: from(9),
    fields: &[
        field(
            "topics",
            Type::Array(&Type::Struct(&[
                field("topic_id", Type::Uuid, from(10)),
                field("name", Type::String, from(0)).nullable(from(10)),
            ])),
            from(0),
        )
        .nullable(from(1)),
        field("allow_auto_topic_creation", Type::Bool, from(4)),
        field(
            "include_cluster_authorized_operations",
            Type::Bool,
            range(8, 10),
        ),
        field("include_topic_authorized_operations", Type::Bool, from(8)),
    ],
};

/// OffsetCommitRequest.json.
static OFFSET_COMMIT: Schema = Schema {
    name: "OffsetCommit",
    api_key: 8,
    versions: range(2, 8),
    flexible: from(8),
    fields: &[
        field("group_id", Type::String, from(0)),
        field("generation_id_or_member_epoch", Type::Int32, from(1)),
        field("member_id", Type::String, from(1)),
        field("group_instance_id", Type::String, from(7)).nullable(from(7)),
        field("retention_time_ms", Type::Int64, range(2, 4)),
        field(
            "topics",
            Type::Array(&Type::Struct(&[
                field("name", Type::String, from(0)),
                field(
                    "partitions",
                    Type::Array(&Type::Struct(&[
                        field("partition_index", Type::Int32, from(0)),
                        field("committed_offset", Type::Int64, from(0)),
                        field("committed_leader_epoch", Type::Int32, from(6)),
                        field("commit_timestamp", Type::Int64, range(1, 1)),
                        field("committed_metadata", Type::String, from(0)).nullable(from(0)),
                    ])),
                    from(0),
                ),
            ])),
            from(0),
        ),
    ],
};

/// OffsetFetchRequest.json.
static OFFSET_FETCH: Schema = Schema {
    name: "OffsetFetch",
    api_key: 9,
    versions: range(1, 7),
    flexible: from(6),
    fields: &[
        field("group_id", Type::String, range(0, 7)),
        field(
            "topics",
            Type::Array(&Type::Struct(&[
                field("name", Type::String, range(0, 7)),
                field("partition_indexes", Type::Array(&Type::Int32), range(0, 7)),
            ])),
            range(0, 7),
        )
        .nullable(range(2, 7)),
        field(
            "groups",
            Type::Array(&Type::Struct(&[
                field("group_id", Type::String, from(8)),
                field("member_id", Type::String, from(9)).nullable(from(9)),
                field("member_epoch", Type::Int32, from(9)),
                field(
                    "topics",
                    Type::Array(&Type::Struct(&[
                        field("name", Type::String, from(8)),
                        field("partition_indexes", Type::Array(&Type::Int32), from(8)),
                    ])),
                    from(8),
                )
                .nullable(from(8)),
            ])),
            from(8),
        ),
        field("require_stable", Type::Bool, from(7)),
    ],
};

/// FindCoordinatorRequest.json.
static FIND_COORDINATOR: Schema = Schema {
    name: "FindCoordinator",
    api_key: 10,
    versions: range(0, 3),
    flexible: from(3),
    fields: &[
        field("key", Type::String, range(0, 3)),
        field("key_type", Type::Int8, from(1)),
        field("coordinator_keys", Type::Array(&Type::String), from(4)),
    ],
};

/// JoinGroupRequest.json.
static JOIN_GROUP: Schema = Schema {
    name: "JoinGroup",
    api_key: 11,
    versions: range(0, 7),
    flexible: from(6),
    fields: &[
        field("group_id", Type::String, from(0)),
        field("session_timeout_ms", Type::Int32, from(0)),
        field("rebalance_timeout_ms", Type::Int32, from(1)),
        field("member_id", Type::String, from(0)),
        field("group_instance_id", Type::String, from(5)).nullable(from(5)),
        field("protocol_type", Type::String, from(0)),
        field(
            "protocols",
            Type::Array(&Type::Struct(&[
                field("name", Type::String, from(0)),
                field("metadata", Type::Bytes, from(0)),
            ])),
            from(0),
        ),
        field("reason", Type::String, from(8)).nullable(from(8)),
    ],
};

/// HeartbeatRequest.json.
static HEARTBEAT: Schema = Schema {
    name: "Heartbeat",
    api_key: 12,
    versions: range(0, 4),
    flexible: from(4),
    fields: &[
        field("group_id", Type::String, from(0)),
        field("generation_id", Type::Int32, from(0)),
        field("member_id", Type::String, from(0)),
        field("group_instance_id", Type::String, from(3)).nullable(from(3)),
    ],
};

/// LeaveGroupRequest.json.
static LEAVE_GROUP: Schema = Schema {
    name: "LeaveGroup",
    api_key: 13,
    versions: range(0, 5),
    flexible: from(4),
    fields: &[
        field("group_id", Type::String, from(0)),
        field("member_id", Type::String, range(0, 2)),
        field(
            "members",
            Type::Array(&Type::Struct(&[
                field("member_id", Type::String, from(3)),
                field("group_instance_id", Type::String, from(3)).nullable(from(3)),
                field("reason", Type::String, from(5)).nullable(from(5)),
            ])),
            from(3),
        ),
    ],
};

/// SyncGroupRequest.json.
static SYNC_GROUP: Schema = Schema {
    name: "SyncGroup",
    api_key: 14,
    versions: range(0, 5),
    flexible: from(4),
    fields: &[
        field("group_id", Type::String, from(0)),
        field("generation_id", Type::Int32, from(0)),
        field("member_id", Type::String, from(0)),
        field("group_instance_id", Type::String, from(3)).nullable(from(3)),
        field("protocol_type", Type::String, from(5)).nullable(from(5)),
        field("protocol_name", Type::String, from(5)).nullable(from(5)),
        field(
            "assignments",
            Type::Array(&Type::Struct(&[
                field("member_id", Type::String, from(0)),
                field("assignment", Type::Bytes, from(0)),
            ])),
            from(0),
        ),
    ],
};

/// DescribeGroupsRequest.json.
static DESCRIBE_GROUPS: Schema = Schema {
    name: "DescribeGroups",
    api_key: 15,
    versions: range(0, 5),
    flexible: from(5),
    fields: &[
        field("groups", Type::Array(&Type::String), from(0)),
        field("include_authorized_operations", Type::Bool, from(3)),
    ],
};

/// ListGroupsRequest.json.
static LIST_GROUPS: Schema = Schema {
    name: "ListGroups",
    api_key: 16,
    versions: range(0, 4),
    flexible: from(3),
    fields: &[
        field("states_filter", Type::Array(&Type::String), from(4)),
        field("types_filter", Type::Array(&Type::String), from(5)),
    ],
};

/// ApiVersionsRequest.json.
static API_VERSIONS: Schema = Schema {
    name: "ApiVersions",
    api_key: 18,
    versions: range(0, 4),
    flexible: from(3),
    fields: &[
        field("client_software_name", Type::String, from(3)),
        field("client_software_version", Type::String, from(3)),
    ],
};

/// CreateTopicsRequest.json.
static CREATE_TOPICS: Schema = Schema {
    name: "CreateTopics",
    api_key: 19,
    versions: range(2, 7),
    flexible: from(5),
    fields: &[
        field(
            "topics",
            Type::Array(&Type::Struct(&[
                field("name", Type::String, from(0)),
                field("num_partitions", Type::Int32, from(0)),
                field("replication_factor", Type::Int16, from(0)),
                field(
                    "assignments",
                    Type::Array(&Type::Struct(&[
                        field("partition_index", Type::Int32, from(0)),
                        field("broker_ids", Type::Array(&Type::Int32), from(0)),
                    ])),
                    from(0),
                ),
                field(
                    "configs",
                    Type::Array(&Type::Struct(&[
                        field("name", Type::String, from(0)),
                        field("value", Type::String, from(0)).nullable(from(0)),
                    ])),
                    from(0),
                ),
            ])),
            from(0),
        ),
        field("timeout_ms", Type::Int32, from(0)),
        field("validate_only", Type::Bool, from(1)),
    ],
};

/// DeleteTopicsRequest.json.
static DELETE_TOPICS: Schema = Schema {
    name: "DeleteTopics",
    api_key: 20,
    versions: range(1, 6),
    flexible: from(4),
    fields: &[
        field(
            "topics",
            Type::Array(&Type::Struct(&[
                field("name", Type::String, from(6)).nullable(from(6)),
                field("topic_id", Type::Uuid, from(6)),
            ])),
            from(6),
        ),
        field("topic_names", Type::Array(&Type::String), range(0, 5)),
        field("timeout_ms", Type::Int32, from(0)),
    ],
};

/// InitProducerIdRequest.json.
static INIT_PRODUCER_ID: Schema = Schema {
    name: "InitProducerId",
    api_key: 22,
    versions: range(0, 4),
    flexible: from(2),
    fields: &[
        field("transactional_id", Type::String, from(0)).nullable(from(0)),
        field("transaction_timeout_ms", Type::Int32, from(0)),
        field("producer_id", Type::Int64, from(3)),
        field("producer_epoch", Type::Int16, from(3)),
    ],
};

/// DeleteGroupsRequest.json.
static DELETE_GROUPS: Schema = Schema {
    name: "DeleteGroups",
    api_key: 42,
    versions: range(0, 2),
    flexible: from(2),
    fields: &[field("groups_names", Type::Array(&Type::String), from(0))],
};

static SCHEMAS: [&Schema; 18] = [
    &PRODUCE,
    &FETCH,
    &LIST_OFFSETS,
    &METADATA,
    &OFFSET_COMMIT,
    &OFFSET_FETCH,
    &FIND_COORDINATOR,
    &JOIN_GROUP,
    &HEARTBEAT,
    &LEAVE_GROUP,
    &SYNC_GROUP,
    &DESCRIBE_GROUPS,
    &LIST_GROUPS,
    &API_VERSIONS,
    &CREATE_TOPICS,
    &DELETE_TOPICS,
    &INIT_PRODUCER_ID,
    &DELETE_GROUPS,
];

/// The request layout for `api_key`, if there is a table for it.
#[must_use]
pub fn schema(api_key: i16) -> Option<&'static Schema> {
    SCHEMAS.iter().copied().find(|s| s.api_key == api_key)
}

/// Why a request body was refused. `path` names the field, e.g. `topics[3].partitions`
/// (`body` for the top level).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// There is no table for this API key, or the version is outside its checked range.
    #[error("no request layout for API key {api_key} version {version}")]
    Unsupported {
        /// The API key.
        api_key: i16,
        /// The version.
        version: i16,
    },
    /// A fixed-size value, or a varint, runs past the end.
    #[error("{path}: needs {needed} bytes, {remaining} remaining")]
    Truncated {
        /// The field.
        path: String,
        /// The bytes the value takes (at least).
        needed: usize,
        /// The bytes left.
        remaining: usize,
    },
    /// An unsigned varint longer than 5 bytes or above `u32::MAX`.
    #[error("{path}: malformed unsigned varint (more than 32 bits)")]
    BadVarint {
        /// The field.
        path: String,
    },
    /// A classic (int16/int32) length below -1.
    #[error("{path}: {kind} length {len} is negative")]
    NegativeLength {
        /// The field.
        path: String,
        /// `string`, `bytes` or `array`.
        kind: &'static str,
        /// The length read.
        len: i32,
    },
    /// A null where the field is not nullable at this version.
    #[error("{path}: null {kind} in a field that is not nullable")]
    UnexpectedNull {
        /// The field.
        path: String,
        /// `string`, `bytes` or `array`.
        kind: &'static str,
    },
    /// A length (byte count, or element count for arrays) above the bytes left.
    #[error("{path}: {kind} length {len} exceeds {remaining} remaining bytes")]
    TooLong {
        /// The field.
        path: String,
        /// `string`, `bytes`, `array` or `tagged field`.
        kind: &'static str,
        /// The length read.
        len: u64,
        /// The bytes left after the length.
        remaining: usize,
    },
    /// So many array elements or tagged fields that even at their smallest they would not
    /// fit in the bytes left.
    #[error("{path}: {count} {what} take at least {needed} bytes, {remaining} remaining")]
    TooMany {
        /// The field.
        path: String,
        /// `array elements` or `tagged fields`.
        what: &'static str,
        /// The count read.
        count: u64,
        /// The least bytes that many take.
        needed: u64,
        /// The bytes left after the count.
        remaining: usize,
    },
    /// A known tagged field whose value does not fill exactly the size it declares.
    #[error("{path}: tagged field {tag} declares {declared} bytes but its value takes {used}")]
    TaggedFieldSize {
        /// The field.
        path: String,
        /// Its tag.
        tag: u32,
        /// The size in the tagged section.
        declared: usize,
        /// The bytes its value took.
        used: usize,
    },
    /// Bytes left over after the last field.
    #[error("{count} trailing bytes after the request body")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
}

/// Checks a request body (the bytes after the request header) against the layout of API
/// `api_key` at `version`: every length is in range of the bytes that remain, varints and
/// tagged sections are well-formed, and the body is consumed exactly. Never allocates more
/// than an error message, never panics.
///
/// # Errors
/// [`WireError::Unsupported`] for an API or version without a table, otherwise the first
/// problem found.
pub fn check_request(api_key: i16, version: i16, body: &[u8]) -> Result<(), WireError> {
    match schema(api_key) {
        Some(s) if s.versions.contains(version) => check_schema(s, version, body),
        _ => Err(WireError::Unsupported { api_key, version }),
    }
}

/// [`check_request`] without the check that `version` is one of those the tables were
/// verified for.
fn check_schema(schema: &Schema, version: i16, body: &[u8]) -> Result<(), WireError> {
    let walk = Walk {
        version,
        flexible: schema.flexible.contains(version),
    };
    let mut r = Reader { buf: body };
    walk.fields(&mut r, schema.fields, &Path::ROOT)?;
    match r.remaining() {
        0 => Ok(()),
        count => Err(WireError::TrailingBytes { count }),
    }
}

/// One step of a field path.
#[derive(Clone, Copy)]
enum Seg {
    Field(&'static str),
    Index(u64),
    Tag(u32),
}

/// A field path kept on the stack while walking; rendered only for an error.
#[derive(Clone, Copy)]
struct Path<'p> {
    parent: Option<&'p Path<'p>>,
    seg: Option<Seg>,
}

impl<'p> Path<'p> {
    const ROOT: Path<'static> = Path {
        parent: None,
        seg: None,
    };

    fn child(&'p self, seg: Seg) -> Path<'p> {
        Path {
            parent: Some(self),
            seg: Some(seg),
        }
    }

    fn field(&'p self, name: &'static str) -> Path<'p> {
        self.child(Seg::Field(name))
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut segs = Vec::new();
        let mut at = Some(self);
        while let Some(p) = at {
            segs.extend(p.seg);
            at = p.parent;
        }
        if segs.is_empty() {
            return f.write_str("body");
        }
        for (i, seg) in segs.iter().rev().enumerate() {
            match seg {
                Seg::Field(name) if i == 0 => f.write_str(name)?,
                Seg::Field(name) => write!(f, ".{name}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
                Seg::Tag(t) => write!(f, "[tag {t}]")?,
            }
        }
        Ok(())
    }
}

/// The unread rest of a body (or of one tagged field's value).
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self, n: usize, path: &Path<'_>) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::Truncated {
                path: path.to_string(),
                needed: n,
                remaining: self.buf.len(),
            });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn int16(&mut self, path: &Path<'_>) -> Result<i16, WireError> {
        let b = self.take(2, path)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn int32(&mut self, path: &Path<'_>) -> Result<i32, WireError> {
        let b = self.take(4, path)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An unsigned varint of at most 32 bits: at most 5 bytes, the fifth below 0x10.
    fn uvarint(&mut self, path: &Path<'_>) -> Result<u32, WireError> {
        let mut value = 0_u32;
        for i in 0..5 {
            let b = self.take(1, path)?[0];
            if i == 4 && b > 0x0f {
                return Err(WireError::BadVarint {
                    path: path.to_string(),
                });
            }
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        // Unreachable: the fifth byte is below 0x10, so it ended the varint.
        Err(WireError::BadVarint {
            path: path.to_string(),
        })
    }
}

/// The kind of length prefix, for reading and for messages.
#[derive(Clone, Copy)]
enum Prefix {
    String,
    Bytes,
    Array,
}

impl Prefix {
    fn name(self) -> &'static str {
        match self {
            Prefix::String => "string",
            Prefix::Bytes => "bytes",
            Prefix::Array => "array",
        }
    }
}

/// Walks values at one version.
struct Walk {
    version: i16,
    flexible: bool,
}

impl Walk {
    /// The fields of a struct (or of the request) present inline at this version, then in
    /// flexible versions its tagged section.
    fn fields(
        &self,
        r: &mut Reader<'_>,
        fields: &[Field],
        path: &Path<'_>,
    ) -> Result<(), WireError> {
        for f in fields.iter().filter(|f| f.inline_at(self.version)) {
            let nullable = f.nullable.contains(self.version);
            self.value(r, &f.ty, nullable, &path.field(f.name))?;
        }
        if self.flexible {
            self.tagged(r, fields, path)?;
        }
        Ok(())
    }

    /// A tagged section: a count, then per field a tag, a size and that many bytes. The
    /// value of a tag this table knows is checked too, and must fill its size exactly:
    /// `kafka-protocol` decodes known tagged values from the stream without looking at the
    /// size, so a mismatch would make it read the rest of the body out of step with us.
    fn tagged(
        &self,
        r: &mut Reader<'_>,
        fields: &[Field],
        path: &Path<'_>,
    ) -> Result<(), WireError> {
        let section = path.field("tagged_fields");
        let count = r.uvarint(&section)?;
        // Each entry takes at least a one-byte tag and a one-byte size.
        let needed = u64::from(count) * 2;
        if needed > r.remaining() as u64 {
            return Err(WireError::TooMany {
                path: section.to_string(),
                what: "tagged fields",
                count: u64::from(count),
                needed,
                remaining: r.remaining(),
            });
        }
        for _ in 0..count {
            let tag = r.uvarint(&section)?;
            let entry = section.child(Seg::Tag(tag));
            let size = r.uvarint(&entry)?;
            if u64::from(size) > r.remaining() as u64 {
                return Err(WireError::TooLong {
                    path: entry.to_string(),
                    kind: "tagged field",
                    len: u64::from(size),
                    remaining: r.remaining(),
                });
            }
            let declared = size as usize;
            let data = r.take(declared, &entry)?;
            let known = fields
                .iter()
                .find(|f| f.tagged_at(self.version) && f.tag.is_some_and(|t| t.tag == tag));
            if let Some(f) = known {
                let fpath = path.field(f.name);
                let mut sub = Reader { buf: data };
                self.value(&mut sub, &f.ty, f.nullable.contains(self.version), &fpath)?;
                if sub.remaining() != 0 {
                    return Err(WireError::TaggedFieldSize {
                        path: fpath.to_string(),
                        tag,
                        declared,
                        used: declared - sub.remaining(),
                    });
                }
            }
        }
        Ok(())
    }

    fn value(
        &self,
        r: &mut Reader<'_>,
        ty: &Type,
        nullable: bool,
        path: &Path<'_>,
    ) -> Result<(), WireError> {
        let fixed = |r: &mut Reader<'_>, n| r.take(n, path).map(drop);
        match ty {
            Type::Int8 | Type::Bool => fixed(r, 1),
            Type::Int16 | Type::Uint16 => fixed(r, 2),
            Type::Int32 => fixed(r, 4),
            Type::Int64 | Type::Float64 => fixed(r, 8),
            Type::Uuid => fixed(r, 16),
            Type::String => self.blob(r, Prefix::String, nullable, path),
            Type::Bytes | Type::Records => self.blob(r, Prefix::Bytes, nullable, path),
            Type::Struct(fields) => self.fields(r, fields, path),
            Type::Array(elem) => {
                let Some(count) = self.length(r, Prefix::Array, nullable, path)? else {
                    return Ok(());
                };
                let remaining = r.remaining();
                if count > remaining as u64 {
                    return Err(WireError::TooLong {
                        path: path.to_string(),
                        kind: "array",
                        len: count,
                        remaining,
                    });
                }
                let needed = count.saturating_mul(self.min_size(elem).max(1));
                if needed > remaining as u64 {
                    return Err(WireError::TooMany {
                        path: path.to_string(),
                        what: "array elements",
                        count,
                        needed,
                        remaining,
                    });
                }
                for i in 0..count {
                    self.value(r, elem, false, &path.child(Seg::Index(i)))?;
                }
                Ok(())
            }
        }
    }

    /// A string or bytes value: its length, checked, then its bytes.
    fn blob(
        &self,
        r: &mut Reader<'_>,
        kind: Prefix,
        nullable: bool,
        path: &Path<'_>,
    ) -> Result<(), WireError> {
        let Some(len) = self.length(r, kind, nullable, path)? else {
            return Ok(());
        };
        if len > r.remaining() as u64 {
            return Err(WireError::TooLong {
                path: path.to_string(),
                kind: kind.name(),
                len,
                remaining: r.remaining(),
            });
        }
        r.take(len as usize, path).map(drop)
    }

    /// A length prefix; `None` for null.
    fn length(
        &self,
        r: &mut Reader<'_>,
        kind: Prefix,
        nullable: bool,
        path: &Path<'_>,
    ) -> Result<Option<u64>, WireError> {
        let len = if self.flexible {
            match r.uvarint(path)? {
                0 => None,
                n => Some(u64::from(n - 1)),
            }
        } else {
            let n = match kind {
                Prefix::String => i32::from(r.int16(path)?),
                Prefix::Bytes | Prefix::Array => r.int32(path)?,
            };
            match n {
                -1 => None,
                0.. => Some(u64::from(n.unsigned_abs())),
                _ => {
                    return Err(WireError::NegativeLength {
                        path: path.to_string(),
                        kind: kind.name(),
                        len: n,
                    })
                }
            }
        };
        if len.is_none() && !nullable {
            return Err(WireError::UnexpectedNull {
                path: path.to_string(),
                kind: kind.name(),
            });
        }
        Ok(len)
    }

    /// The fewest bytes a value of `ty` takes at this version.
    fn min_size(&self, ty: &Type) -> u64 {
        let prefix = |classic: u64| if self.flexible { 1 } else { classic };
        match ty {
            Type::Int8 | Type::Bool => 1,
            Type::Int16 | Type::Uint16 => 2,
            Type::Int32 => 4,
            Type::Int64 | Type::Float64 => 8,
            Type::Uuid => 16,
            Type::String => prefix(2),
            Type::Bytes | Type::Records | Type::Array(_) => prefix(4),
            Type::Struct(fields) => {
                let inline: u64 = fields
                    .iter()
                    .filter(|f| f.inline_at(self.version))
                    .map(|f| self.min_size(&f.ty))
                    .sum();
                inline + u64::from(self.flexible)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::create_topics_request::{
        CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
    };
    use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
    use kafka_protocol::messages::fetch_request::{
        FetchPartition, FetchTopic, ForgottenTopic, ReplicaState,
    };
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::leave_group_request::MemberIdentity;
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
    };
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    use kafka_protocol::messages::{
        ApiVersionsRequest, BrokerId, CreateTopicsRequest, DeleteGroupsRequest,
        DeleteTopicsRequest, DescribeGroupsRequest, FetchRequest, FindCoordinatorRequest, GroupId,
        HeartbeatRequest, InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest,
        ListGroupsRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest,
        OffsetFetchRequest, ProduceRequest, ProducerId, SyncGroupRequest, TopicName,
        TransactionalId,
    };
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use uuid::Uuid;

    use super::*;

    /// The API keys and versions `check_request` accepts.
    const COVERED: [(i16, i16, i16); 18] = [
        (0, 3, 9),
        (1, 4, 12),
        (2, 1, 7),
        (3, 0, 12),
        (8, 2, 8),
        (9, 1, 7),
        (10, 0, 3),
        (11, 0, 7),
        (12, 0, 4),
        (13, 0, 5),
        (14, 0, 5),
        (15, 0, 5),
        (16, 0, 4),
        (18, 0, 4),
        (19, 2, 7),
        (20, 1, 6),
        (22, 0, 4),
        (42, 0, 2),
    ];

    /// Versions past the covered ones that both the Kafka JSON the tables come from and
    /// kafka-protocol 0.18 know: checked too, so the transcription is verified throughout.
    /// (DescribeGroups v6 is left out: kafka-protocol knows it, the JSON does not.)
    const BEYOND: [(i16, i16, i16); 9] = [
        (0, 10, 11),
        (1, 13, 17),
        (2, 8, 10),
        (8, 9, 9),
        (9, 8, 9),
        (10, 4, 6),
        (11, 8, 9),
        (16, 5, 5),
        (22, 5, 5),
    ];

    fn all_versions(table: &[(i16, i16, i16)]) -> impl Iterator<Item = (i16, i16)> + '_ {
        table
            .iter()
            .flat_map(|&(key, lo, hi)| (lo..=hi).map(move |v| (key, v)))
    }

    fn flexible(key: i16, version: i16) -> bool {
        schema(key).unwrap().flexible.contains(version)
    }

    fn s(x: &'static str) -> StrBytes {
        StrBytes::from_static_str(x)
    }

    fn tn(x: &'static str) -> TopicName {
        TopicName(s(x))
    }

    fn gid(x: &'static str) -> GroupId {
        GroupId(s(x))
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(0x0123_4567_89ab_cdef_0000_0000_0000_0000 | n)
    }

    /// An unknown tagged field on every struct in flexible versions.
    fn tags(flex: bool) -> BTreeMap<i32, Bytes> {
        let mut m = BTreeMap::new();
        if flex {
            m.insert(100, Bytes::from_static(b"\x05\x00\xff"));
        }
        m
    }

    /// Something shaped like a record batch; its content is not looked at.
    fn records() -> Bytes {
        (0..70_u8)
            .map(|i| i.wrapping_mul(37))
            .collect::<Vec<_>>()
            .into()
    }

    fn enc<T: Encodable>(msg: &T, version: i16) -> Vec<u8> {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf, version).unwrap();
        buf.to_vec()
    }

    fn produce(v: i16) -> Vec<ProduceRequest> {
        let flex = v >= 9;
        let part = |index, records| {
            PartitionProduceData::default()
                .with_index(index)
                .with_records(records)
                .with_unknown_tagged_fields(tags(flex))
        };
        let topic = |name, parts| {
            TopicProduceData::default()
                .with_name(tn(name))
                .with_partition_data(parts)
                .with_unknown_tagged_fields(tags(flex))
        };
        vec![
            ProduceRequest::default()
                .with_transactional_id(None)
                .with_acks(-1)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![
                    topic("orders", vec![part(0, Some(records())), part(7, None)]),
                    topic("payments", vec![part(3, Some(Bytes::new()))]),
                ])
                .with_unknown_tagged_fields(tags(flex)),
            ProduceRequest::default()
                .with_transactional_id(Some(TransactionalId(s("txn-1"))))
                .with_acks(1)
                .with_timeout_ms(5),
        ]
    }

    fn fetch(v: i16) -> Vec<FetchRequest> {
        let flex = v >= 12;
        let part = |p| {
            FetchPartition::default()
                .with_partition(p)
                .with_current_leader_epoch(if v >= 9 { 5 } else { -1 })
                .with_fetch_offset(1234)
                .with_last_fetched_epoch(if v >= 12 { 4 } else { -1 })
                .with_log_start_offset(if v >= 5 { 10 } else { -1 })
                .with_partition_max_bytes(1 << 20)
                .with_replica_directory_id(if v >= 17 { id(77) } else { Uuid::nil() })
                .with_unknown_tagged_fields(tags(flex))
        };
        let topic = |name, n, parts| {
            FetchTopic::default()
                .with_topic(if v <= 12 {
                    tn(name)
                } else {
                    TopicName::default()
                })
                .with_topic_id(if v >= 13 { id(n) } else { Uuid::nil() })
                .with_partitions(parts)
                .with_unknown_tagged_fields(tags(flex))
        };
        let forgotten = ForgottenTopic::default()
            .with_topic(if v <= 12 {
                tn("old")
            } else {
                TopicName::default()
            })
            .with_topic_id(if v >= 13 { id(3) } else { Uuid::nil() })
            .with_partitions(vec![1, 2, 3])
            .with_unknown_tagged_fields(tags(flex));
        let replica_state = if v >= 15 {
            ReplicaState::default()
                .with_replica_id(BrokerId(2))
                .with_replica_epoch(9)
        } else {
            ReplicaState::default()
        };
        vec![
            FetchRequest::default()
                .with_cluster_id(flex.then(|| s("lode-cluster")))
                .with_replica_id(BrokerId(-1))
                .with_replica_state(replica_state)
                .with_max_wait_ms(500)
                .with_min_bytes(1)
                .with_max_bytes(50 << 20)
                .with_isolation_level(1)
                .with_session_id(if v >= 7 { 77 } else { 0 })
                .with_session_epoch(if v >= 7 { 3 } else { -1 })
                .with_topics(vec![
                    topic("orders", 1, vec![part(0), part(1)]),
                    topic("payments", 2, vec![part(4)]),
                ])
                .with_forgotten_topics_data(if v >= 7 { vec![forgotten] } else { vec![] })
                .with_rack_id(if v >= 11 { s("rack-a") } else { s("") })
                .with_unknown_tagged_fields(tags(flex)),
            FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(0),
        ]
    }

    fn list_offsets(v: i16) -> Vec<ListOffsetsRequest> {
        let flex = v >= 6;
        let part = |p| {
            ListOffsetsPartition::default()
                .with_partition_index(p)
                .with_current_leader_epoch(if v >= 4 { 3 } else { -1 })
                .with_timestamp(-1)
                .with_unknown_tagged_fields(tags(flex))
        };
        let topic = |name, parts| {
            ListOffsetsTopic::default()
                .with_name(tn(name))
                .with_partitions(parts)
                .with_unknown_tagged_fields(tags(flex))
        };
        let mut full = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(if v >= 2 { 1 } else { 0 })
            .with_topics(vec![
                topic("orders", vec![part(0), part(1)]),
                topic("payments", vec![part(2)]),
            ])
            .with_unknown_tagged_fields(tags(flex));
        if v >= 10 {
            full = full.with_timeout_ms(1000);
        }
        vec![full, ListOffsetsRequest::default()]
    }

    fn metadata(v: i16) -> Vec<MetadataRequest> {
        let flex = v >= 9;
        let topic = |name: Option<&'static str>, n| {
            MetadataRequestTopic::default()
                .with_topic_id(if v >= 10 { id(n) } else { Uuid::nil() })
                .with_name(name.map(tn))
                .with_unknown_tagged_fields(tags(flex))
        };
        let base = || {
            MetadataRequest::default()
                .with_allow_auto_topic_creation(v < 4)
                .with_include_cluster_authorized_operations((8..=10).contains(&v))
                .with_include_topic_authorized_operations(v >= 8)
                .with_unknown_tagged_fields(tags(flex))
        };
        let mut out = vec![
            base().with_topics(Some(vec![
                topic(Some("orders"), 1),
                topic(Some("payments"), 2),
            ])),
            base().with_topics(Some(vec![])),
        ];
        if v >= 1 {
            out.push(base().with_topics(None));
        }
        if v >= 10 {
            out.push(base().with_topics(Some(vec![topic(None, 3)])));
        }
        out
    }

    fn api_versions(v: i16) -> Vec<ApiVersionsRequest> {
        if v < 3 {
            return vec![ApiVersionsRequest::default()];
        }
        vec![
            ApiVersionsRequest::default()
                .with_client_software_name(s("lode-test"))
                .with_client_software_version(s("1.2.3"))
                .with_unknown_tagged_fields(tags(true)),
            ApiVersionsRequest::default(),
        ]
    }

    fn create_topics(v: i16) -> Vec<CreateTopicsRequest> {
        let flex = v >= 5;
        let assignment = |p, brokers: &[i32]| {
            CreatableReplicaAssignment::default()
                .with_partition_index(p)
                .with_broker_ids(brokers.iter().copied().map(BrokerId).collect())
                .with_unknown_tagged_fields(tags(flex))
        };
        let config = |name, value: Option<&'static str>| {
            CreatableTopicConfig::default()
                .with_name(s(name))
                .with_value(value.map(s))
                .with_unknown_tagged_fields(tags(flex))
        };
        vec![
            CreateTopicsRequest::default()
                .with_topics(vec![
                    CreatableTopic::default()
                        .with_name(tn("orders"))
                        .with_num_partitions(-1)
                        .with_replication_factor(-1)
                        .with_assignments(vec![assignment(0, &[1, 2, 3]), assignment(1, &[2])])
                        .with_configs(vec![
                            config("cleanup.policy", Some("compact")),
                            config("retention.ms", None),
                        ])
                        .with_unknown_tagged_fields(tags(flex)),
                    CreatableTopic::default()
                        .with_name(tn("payments"))
                        .with_num_partitions(3)
                        .with_replication_factor(1)
                        .with_unknown_tagged_fields(tags(flex)),
                ])
                .with_timeout_ms(60_000)
                .with_validate_only(true)
                .with_unknown_tagged_fields(tags(flex)),
            CreateTopicsRequest::default(),
        ]
    }

    fn delete_topics(v: i16) -> Vec<DeleteTopicsRequest> {
        let flex = v >= 4;
        let full = if v >= 6 {
            DeleteTopicsRequest::default().with_topics(vec![
                DeleteTopicState::default()
                    .with_name(Some(tn("orders")))
                    .with_unknown_tagged_fields(tags(flex)),
                DeleteTopicState::default()
                    .with_name(None)
                    .with_topic_id(id(9))
                    .with_unknown_tagged_fields(tags(flex)),
            ])
        } else {
            DeleteTopicsRequest::default().with_topic_names(vec![tn("orders"), tn("payments")])
        };
        vec![
            full.with_timeout_ms(30_000)
                .with_unknown_tagged_fields(tags(flex)),
            DeleteTopicsRequest::default(),
        ]
    }

    fn init_producer_id(v: i16) -> Vec<InitProducerIdRequest> {
        let flex = v >= 2;
        let mut txn = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(s("txn-1"))))
            .with_transaction_timeout_ms(60_000)
            .with_unknown_tagged_fields(tags(flex));
        if v >= 3 {
            txn = txn.with_producer_id(ProducerId(42)).with_producer_epoch(7);
        }
        vec![
            txn,
            InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(-1),
        ]
    }

    fn offset_commit(v: i16) -> Vec<OffsetCommitRequest> {
        let flex = v >= 8;
        let part = |p, metadata: Option<&'static str>| {
            OffsetCommitRequestPartition::default()
                .with_partition_index(p)
                .with_committed_offset(1234)
                .with_committed_leader_epoch(if v >= 6 { 5 } else { -1 })
                .with_committed_metadata(metadata.map(s))
                .with_unknown_tagged_fields(tags(flex))
        };
        let topic = |name, parts| {
            OffsetCommitRequestTopic::default()
                .with_name(tn(name))
                .with_partitions(parts)
                .with_unknown_tagged_fields(tags(flex))
        };
        vec![
            OffsetCommitRequest::default()
                .with_group_id(gid("group-1"))
                .with_generation_id_or_member_epoch(3)
                .with_member_id(s("member-1"))
                .with_group_instance_id((v >= 7).then(|| s("instance-1")))
                .with_retention_time_ms(if v <= 4 { 86_400_000 } else { -1 })
                .with_topics(vec![
                    topic("orders", vec![part(0, Some("meta")), part(1, None)]),
                    topic("payments", vec![part(2, Some(""))]),
                ])
                .with_unknown_tagged_fields(tags(flex)),
            OffsetCommitRequest::default().with_group_id(gid("group-1")),
        ]
    }

    fn offset_fetch(v: i16) -> Vec<OffsetFetchRequest> {
        let flex = v >= 6;
        if v <= 7 {
            let topic = |name, parts: &[i32]| {
                OffsetFetchRequestTopic::default()
                    .with_name(tn(name))
                    .with_partition_indexes(parts.to_vec())
                    .with_unknown_tagged_fields(tags(flex))
            };
            let base = || {
                OffsetFetchRequest::default()
                    .with_group_id(gid("group-1"))
                    .with_require_stable(v >= 7)
                    .with_unknown_tagged_fields(tags(flex))
            };
            let mut out = vec![
                base().with_topics(Some(vec![
                    topic("orders", &[0, 1, 2]),
                    topic("payments", &[3]),
                ])),
                base().with_topics(Some(vec![])),
            ];
            if v >= 2 {
                // All the group's topics.
                out.push(base().with_topics(None));
            }
            return out;
        }
        let topics = |name, parts: &[i32]| {
            OffsetFetchRequestTopics::default()
                .with_name(tn(name))
                .with_partition_indexes(parts.to_vec())
                .with_unknown_tagged_fields(tags(flex))
        };
        let group = |name, member: Option<&'static str>, topics| {
            let g = OffsetFetchRequestGroup::default()
                .with_group_id(gid(name))
                .with_topics(topics)
                .with_unknown_tagged_fields(tags(flex));
            if v >= 9 {
                g.with_member_id(member.map(s))
                    .with_member_epoch(if member.is_some() { 5 } else { -1 })
            } else {
                g
            }
        };
        vec![
            OffsetFetchRequest::default()
                .with_groups(vec![
                    group(
                        "group-1",
                        Some("member-1"),
                        Some(vec![topics("orders", &[0, 1]), topics("payments", &[2])]),
                    ),
                    group("group-2", None, None),
                ])
                .with_require_stable(true)
                .with_unknown_tagged_fields(tags(flex)),
            OffsetFetchRequest::default(),
        ]
    }

    fn find_coordinator(v: i16) -> Vec<FindCoordinatorRequest> {
        let flex = v >= 3;
        let full = if v <= 3 {
            FindCoordinatorRequest::default()
                .with_key(s("group-1"))
                .with_key_type(if v >= 1 { 1 } else { 0 })
        } else {
            FindCoordinatorRequest::default()
                .with_key_type(1)
                .with_coordinator_keys(vec![s("group-1"), s("txn-1")])
        };
        vec![
            full.with_unknown_tagged_fields(tags(flex)),
            FindCoordinatorRequest::default(),
        ]
    }

    fn join_group(v: i16) -> Vec<JoinGroupRequest> {
        let flex = v >= 6;
        let protocol = |name, metadata: &'static [u8]| {
            JoinGroupRequestProtocol::default()
                .with_name(s(name))
                .with_metadata(Bytes::from_static(metadata))
                .with_unknown_tagged_fields(tags(flex))
        };
        vec![
            JoinGroupRequest::default()
                .with_group_id(gid("group-1"))
                .with_session_timeout_ms(45_000)
                .with_rebalance_timeout_ms(if v >= 1 { 300_000 } else { -1 })
                .with_member_id(s("member-1"))
                .with_group_instance_id((v >= 5).then(|| s("instance-1")))
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![
                    protocol("range", b"\x00\x03\x00\x00\x00\x01\x00\x06orders"),
                    protocol("cooperative-sticky", b""),
                ])
                .with_reason((v >= 8).then(|| s("rebalance needed")))
                .with_unknown_tagged_fields(tags(flex)),
            JoinGroupRequest::default()
                .with_group_id(gid("group-1"))
                .with_session_timeout_ms(10_000)
                .with_protocol_type(s("consumer")),
        ]
    }

    fn heartbeat(v: i16) -> Vec<HeartbeatRequest> {
        let flex = v >= 4;
        vec![
            HeartbeatRequest::default()
                .with_group_id(gid("group-1"))
                .with_generation_id(3)
                .with_member_id(s("member-1"))
                .with_group_instance_id((v >= 3).then(|| s("instance-1")))
                .with_unknown_tagged_fields(tags(flex)),
            HeartbeatRequest::default(),
        ]
    }

    fn leave_group(v: i16) -> Vec<LeaveGroupRequest> {
        let flex = v >= 4;
        let member = |id, instance: Option<&'static str>, reason: Option<&'static str>| {
            MemberIdentity::default()
                .with_member_id(s(id))
                .with_group_instance_id(instance.map(s))
                .with_reason(if v >= 5 { reason.map(s) } else { None })
                .with_unknown_tagged_fields(tags(flex))
        };
        let full = LeaveGroupRequest::default().with_group_id(gid("group-1"));
        let full = if v <= 2 {
            full.with_member_id(s("member-1"))
        } else {
            full.with_members(vec![
                member("member-1", Some("instance-1"), Some("shutting down")),
                member("member-2", None, None),
            ])
        };
        vec![
            full.with_unknown_tagged_fields(tags(flex)),
            LeaveGroupRequest::default(),
        ]
    }

    fn sync_group(v: i16) -> Vec<SyncGroupRequest> {
        let flex = v >= 4;
        let assignment = |member, data: &'static [u8]| {
            SyncGroupRequestAssignment::default()
                .with_member_id(s(member))
                .with_assignment(Bytes::from_static(data))
                .with_unknown_tagged_fields(tags(flex))
        };
        vec![
            SyncGroupRequest::default()
                .with_group_id(gid("group-1"))
                .with_generation_id(7)
                .with_member_id(s("member-1"))
                .with_group_instance_id((v >= 3).then(|| s("instance-1")))
                .with_protocol_type((v >= 5).then(|| s("consumer")))
                .with_protocol_name((v >= 5).then(|| s("range")))
                .with_assignments(vec![
                    assignment("member-1", b"\x00\x03\x00\x00\x00\x01\x00\x06orders"),
                    assignment("member-2", b""),
                ])
                .with_unknown_tagged_fields(tags(flex)),
            SyncGroupRequest::default(),
        ]
    }

    fn describe_groups(v: i16) -> Vec<DescribeGroupsRequest> {
        let flex = v >= 5;
        vec![
            DescribeGroupsRequest::default()
                .with_groups(vec![gid("group-1"), gid("group-2")])
                .with_include_authorized_operations(v >= 3)
                .with_unknown_tagged_fields(tags(flex)),
            DescribeGroupsRequest::default(),
        ]
    }

    fn list_groups(v: i16) -> Vec<ListGroupsRequest> {
        if v < 3 {
            return vec![ListGroupsRequest::default()];
        }
        let mut full = ListGroupsRequest::default().with_unknown_tagged_fields(tags(true));
        if v >= 4 {
            full = full.with_states_filter(vec![s("Stable"), s("Empty")]);
        }
        if v >= 5 {
            full = full.with_types_filter(vec![s("classic"), s("consumer")]);
        }
        vec![full, ListGroupsRequest::default()]
    }

    fn delete_groups(v: i16) -> Vec<DeleteGroupsRequest> {
        let flex = v >= 2;
        vec![
            DeleteGroupsRequest::default()
                .with_groups_names(vec![gid("group-1"), gid("group-2")])
                .with_unknown_tagged_fields(tags(flex)),
            DeleteGroupsRequest::default(),
        ]
    }

    /// Realistic bodies of API `key` at `version`, encoded by kafka-protocol. The first is
    /// the fullest one.
    fn samples(key: i16, v: i16) -> Vec<Vec<u8>> {
        fn all<T: Encodable>(msgs: Vec<T>, v: i16) -> Vec<Vec<u8>> {
            msgs.iter().map(|m| enc(m, v)).collect()
        }
        match key {
            0 => all(produce(v), v),
            1 => all(fetch(v), v),
            2 => all(list_offsets(v), v),
            3 => all(metadata(v), v),
            8 => all(offset_commit(v), v),
            9 => all(offset_fetch(v), v),
            10 => all(find_coordinator(v), v),
            11 => all(join_group(v), v),
            12 => all(heartbeat(v), v),
            13 => all(leave_group(v), v),
            14 => all(sync_group(v), v),
            15 => all(describe_groups(v), v),
            16 => all(list_groups(v), v),
            18 => all(api_versions(v), v),
            19 => all(create_topics(v), v),
            20 => all(delete_topics(v), v),
            22 => all(init_producer_id(v), v),
            42 => all(delete_groups(v), v),
            _ => unreachable!("no samples for API {key}"),
        }
    }

    /// Decodes with kafka-protocol: whether it succeeded and consumed everything.
    fn kp_decodes(key: i16, v: i16, body: &[u8]) -> bool {
        fn dec<T: Decodable>(v: i16, body: &[u8]) -> bool {
            let mut b = Bytes::copy_from_slice(body);
            T::decode(&mut b, v).is_ok() && b.is_empty()
        }
        match key {
            0 => dec::<ProduceRequest>(v, body),
            1 => dec::<FetchRequest>(v, body),
            2 => dec::<ListOffsetsRequest>(v, body),
            3 => dec::<MetadataRequest>(v, body),
            8 => dec::<OffsetCommitRequest>(v, body),
            9 => dec::<OffsetFetchRequest>(v, body),
            10 => dec::<FindCoordinatorRequest>(v, body),
            11 => dec::<JoinGroupRequest>(v, body),
            12 => dec::<HeartbeatRequest>(v, body),
            13 => dec::<LeaveGroupRequest>(v, body),
            14 => dec::<SyncGroupRequest>(v, body),
            15 => dec::<DescribeGroupsRequest>(v, body),
            16 => dec::<ListGroupsRequest>(v, body),
            18 => dec::<ApiVersionsRequest>(v, body),
            19 => dec::<CreateTopicsRequest>(v, body),
            20 => dec::<DeleteTopicsRequest>(v, body),
            22 => dec::<InitProducerIdRequest>(v, body),
            42 => dec::<DeleteGroupsRequest>(v, body),
            _ => unreachable!("no decoder for API {key}"),
        }
    }

    fn path_of(e: &WireError) -> &str {
        match e {
            WireError::Truncated { path, .. }
            | WireError::BadVarint { path }
            | WireError::NegativeLength { path, .. }
            | WireError::UnexpectedNull { path, .. }
            | WireError::TooLong { path, .. }
            | WireError::TooMany { path, .. }
            | WireError::TaggedFieldSize { path, .. } => path,
            WireError::Unsupported { .. } | WireError::TrailingBytes { .. } => "",
        }
    }

    #[test]
    fn realistic_requests_pass_at_every_covered_version() {
        let mut checked = 0;
        for (key, v) in all_versions(&COVERED) {
            for (i, body) in samples(key, v).iter().enumerate() {
                assert!(
                    kp_decodes(key, v, body),
                    "sample {i} of {key} v{v} round-trips"
                );
                if let Err(e) = check_request(key, v, body) {
                    panic!("API {key} v{v} sample {i} refused: {e}");
                }
                checked += 1;
            }
        }
        // 115 covered versions, each with at least two shapes (full and minimal) except
        // ApiVersions v0-2 and ListGroups v0-2, whose bodies are empty.
        assert!(checked >= 2 * 115 - 6, "{checked}");
    }

    #[test]
    fn tables_also_match_versions_beyond_the_covered_ones() {
        for (key, v) in all_versions(&BEYOND) {
            for (i, body) in samples(key, v).iter().enumerate() {
                assert!(
                    kp_decodes(key, v, body),
                    "sample {i} of {key} v{v} round-trips"
                );
                if let Err(e) = check_schema(schema(key).unwrap(), v, body) {
                    panic!("API {key} v{v} sample {i} refused: {e}");
                }
                assert_eq!(
                    check_request(key, v, body),
                    Err(WireError::Unsupported {
                        api_key: key,
                        version: v
                    })
                );
            }
        }
    }

    #[test]
    fn covered_versions_are_the_advertised_ones() {
        assert_eq!(crate::server::SUPPORTED.len(), SCHEMAS.len());
        for &(key, lo, hi) in crate::server::SUPPORTED {
            let s = schema(key as i16).unwrap_or_else(|| panic!("no table for {key:?}"));
            // Produce v0-2 is advertised but refused before decoding (RecordBatch v2 only).
            let lo = if key == kafka_protocol::messages::ApiKey::Produce {
                3
            } else {
                lo
            };
            assert_eq!(s.versions, range(lo, hi), "{}", s.name);
        }
        for &(key, lo, hi) in &COVERED {
            assert_eq!(schema(key).unwrap().versions, range(lo, hi));
        }
    }

    #[test]
    fn unsupported_apis_and_versions_are_refused() {
        for (key, v) in [
            (0, 2),
            (0, 10),
            (1, 3),
            (1, 13),
            (3, -1),
            (18, 5),
            (99, 0),
            (-1, 0),
        ] {
            assert_eq!(
                check_request(key, v, &[]),
                Err(WireError::Unsupported {
                    api_key: key,
                    version: v
                })
            );
        }
    }

    #[test]
    fn metadata_v0_allocation_bomb() {
        let err = check_request(3, 0, &[0x03, 0x3c, 0x0c, 0x00, 0xb6]).unwrap_err();
        assert_eq!(
            err,
            WireError::TooLong {
                path: "topics".into(),
                kind: "array",
                len: 0x033c_0c00,
                remaining: 1,
            }
        );
        assert_eq!(
            err.to_string(),
            "topics: array length 54266880 exceeds 1 remaining bytes"
        );
    }

    #[test]
    fn every_truncation_is_refused() {
        for (key, v) in all_versions(&COVERED).chain(all_versions(&BEYOND)) {
            let s = schema(key).unwrap();
            for body in samples(key, v) {
                for len in 0..body.len() {
                    assert!(
                        check_schema(s, v, &body[..len]).is_err(),
                        "API {key} v{v}: prefix of {len}/{} bytes accepted",
                        body.len()
                    );
                }
            }
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        for (key, v) in all_versions(&COVERED) {
            for mut body in samples(key, v) {
                body.push(0);
                assert_eq!(
                    check_request(key, v, &body),
                    Err(WireError::TrailingBytes { count: 1 })
                );
            }
        }
    }

    fn uvarint(mut n: u32) -> Vec<u8> {
        let mut out = Vec::new();
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out
    }

    /// An array count prefix.
    fn count(flex: bool, n: usize) -> Vec<u8> {
        if flex {
            uvarint(n as u32 + 1)
        } else {
            (n as i32).to_be_bytes().to_vec()
        }
    }

    /// A string length prefix.
    fn str_len(flex: bool, n: usize) -> Vec<u8> {
        if flex {
            uvarint(n as u32 + 1)
        } else {
            (n as i16).to_be_bytes().to_vec()
        }
    }

    fn string(flex: bool, x: &str) -> Vec<u8> {
        [str_len(flex, x.len()), x.as_bytes().to_vec()].concat()
    }

    /// Replaces `prefix` in the first occurrence of `before ++ prefix ++ after` in `body`.
    fn splice(body: &[u8], before: &[u8], prefix: &[u8], after: &[u8], with: &[u8]) -> Vec<u8> {
        let needle = [before, prefix, after].concat();
        let at = body
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap_or_else(|| panic!("{needle:02x?} not in {body:02x?}"))
            + before.len();
        [&body[..at], with, &body[at + prefix.len()..]].concat()
    }

    /// A length prefix in an encoding: what precedes it, the prefix, what follows it,
    /// whether it is a string's length, the path an error about it names.
    type Anchor = (Vec<u8>, Vec<u8>, Vec<u8>, bool, &'static str);

    /// Where the fullest sample of `key` at `v` has length prefixes worth corrupting.
    fn anchors(key: i16, v: i16) -> Vec<Anchor> {
        let f = flexible(key, v);
        let int32 = |n: i32| n.to_be_bytes().to_vec();
        let orders = string(f, "orders");
        let group = string(f, "group-1");
        let member = string(f, "member-1");
        let group_id: Anchor = (vec![], str_len(f, 7), b"group-1".to_vec(), true, "group_id");
        match key {
            0 => vec![
                (vec![], count(f, 2), orders.clone(), false, "topic_data"),
                (
                    orders,
                    count(f, 2),
                    int32(0),
                    false,
                    "topic_data[0].partition_data",
                ),
            ],
            1 | 2 => vec![
                (vec![], count(f, 2), orders.clone(), false, "topics"),
                (orders, count(f, 2), int32(0), false, "topics[0].partitions"),
            ],
            3 => {
                let first = if v >= 10 {
                    [id(1).as_bytes().to_vec(), orders].concat()
                } else {
                    orders
                };
                vec![(vec![], count(f, 2), first, false, "topics")]
            }
            8 => {
                let metadata = b"meta".to_vec();
                vec![
                    group_id,
                    (vec![], count(f, 2), orders.clone(), false, "topics"),
                    (orders, count(f, 2), int32(0), false, "topics[0].partitions"),
                    (
                        vec![],
                        str_len(f, 4),
                        metadata,
                        true,
                        "topics[0].partitions[0].committed_metadata",
                    ),
                ]
            }
            9 if v >= 8 => vec![
                (vec![], count(f, 2), group.clone(), false, "groups"),
                (
                    vec![],
                    count(f, 2),
                    orders.clone(),
                    false,
                    "groups[0].topics",
                ),
                (
                    orders,
                    count(f, 2),
                    int32(0),
                    false,
                    "groups[0].topics[0].partition_indexes",
                ),
            ],
            9 => vec![
                group_id,
                (group, count(f, 2), orders.clone(), false, "topics"),
                (
                    orders,
                    count(f, 3),
                    int32(0),
                    false,
                    "topics[0].partition_indexes",
                ),
            ],
            10 if v >= 4 => vec![
                (vec![1], count(f, 2), group, false, "coordinator_keys"),
                (
                    count(f, 2),
                    str_len(f, 7),
                    b"group-1".to_vec(),
                    true,
                    "coordinator_keys[0]",
                ),
            ],
            10 => vec![(vec![], str_len(f, 7), b"group-1".to_vec(), true, "key")],
            11 => {
                let range_ = string(f, "range");
                vec![
                    group_id,
                    (
                        string(f, "consumer"),
                        count(f, 2),
                        range_.clone(),
                        false,
                        "protocols",
                    ),
                    (
                        range_,
                        count(f, 14),
                        vec![0, 3, 0, 0],
                        false,
                        "protocols[0].metadata",
                    ),
                ]
            }
            12 => vec![
                group_id,
                (
                    int32(3),
                    str_len(f, 8),
                    b"member-1".to_vec(),
                    true,
                    "member_id",
                ),
            ],
            13 if v >= 3 => vec![
                group_id,
                (group, count(f, 2), member, false, "members"),
                (
                    vec![],
                    str_len(f, 10),
                    b"instance-1".to_vec(),
                    true,
                    "members[0].group_instance_id",
                ),
            ],
            13 => vec![
                group_id,
                (
                    group,
                    str_len(f, 8),
                    b"member-1".to_vec(),
                    true,
                    "member_id",
                ),
            ],
            14 => vec![
                group_id,
                (vec![], count(f, 2), member.clone(), false, "assignments"),
                (
                    member,
                    count(f, 14),
                    vec![0, 3, 0, 0],
                    false,
                    "assignments[0].assignment",
                ),
            ],
            15 | 42 => {
                let path = if key == 15 { "groups" } else { "groups_names" };
                let first = if key == 15 {
                    "groups[0]"
                } else {
                    "groups_names[0]"
                };
                vec![
                    (vec![], count(f, 2), group, false, path),
                    (count(f, 2), str_len(f, 7), b"group-1".to_vec(), true, first),
                ]
            }
            16 if v >= 5 => vec![
                (
                    vec![],
                    count(f, 2),
                    string(f, "Stable"),
                    false,
                    "states_filter",
                ),
                (
                    vec![],
                    count(f, 2),
                    string(f, "classic"),
                    false,
                    "types_filter",
                ),
            ],
            16 if v >= 4 => vec![(
                vec![],
                count(f, 2),
                string(f, "Stable"),
                false,
                "states_filter",
            )],
            16 => vec![],
            18 if v >= 3 => vec![(
                vec![],
                str_len(f, 9),
                b"lode-test".to_vec(),
                true,
                "client_software_name",
            )],
            18 => vec![],
            19 => vec![
                (vec![], count(f, 2), orders, false, "topics"),
                (
                    int32(0),
                    count(f, 3),
                    int32(1),
                    false,
                    "topics[0].assignments[0].broker_ids",
                ),
            ],
            20 if v >= 6 => vec![(vec![], count(f, 2), orders, false, "topics")],
            20 => vec![(vec![], count(f, 2), orders, false, "topic_names")],
            22 => vec![(
                vec![],
                str_len(f, 5),
                b"txn-1".to_vec(),
                true,
                "transactional_id",
            )],
            _ => unreachable!(),
        }
    }

    #[test]
    fn huge_lengths_are_refused() {
        let mut cases = 0;
        for (key, v) in all_versions(&COVERED) {
            let f = flexible(key, v);
            let body = samples(key, v).swap_remove(0);
            for (before, prefix, after, is_string, path) in anchors(key, v) {
                let huge = match (f, is_string) {
                    (true, _) => vec![0xff, 0xff, 0xff, 0xff, 0x0f],
                    (false, true) => 0x7fff_i16.to_be_bytes().to_vec(),
                    (false, false) => 0x7fff_ffff_i32.to_be_bytes().to_vec(),
                };
                let bad = splice(&body, &before, &prefix, &after, &huge);
                let err = check_request(key, v, &bad).unwrap_err();
                assert!(
                    matches!(err, WireError::TooLong { .. }) && path_of(&err) == path,
                    "API {key} v{v}: {err}"
                );
                // One past the real length still cannot fit what follows.
                let plus_one = if f { uvarint(4_000) } else { huge.clone() };
                assert!(
                    check_request(key, v, &splice(&body, &before, &prefix, &after, &plus_one))
                        .is_err()
                );
                if f {
                    // A 32-bit varint has at most 5 bytes, the fifth at most 0x0f.
                    for bad_varint in [
                        &[0xff, 0xff, 0xff, 0xff, 0x1f][..],
                        &[0x80, 0x80, 0x80, 0x80, 0x80, 0x00],
                    ] {
                        let bad = splice(&body, &before, &prefix, &after, bad_varint);
                        let err = check_request(key, v, &bad).unwrap_err();
                        assert_eq!(
                            err,
                            WireError::BadVarint { path: path.into() },
                            "API {key} v{v}"
                        );
                    }
                } else {
                    let minus_two = if is_string {
                        (-2_i16).to_be_bytes().to_vec()
                    } else {
                        (-2_i32).to_be_bytes().to_vec()
                    };
                    let err =
                        check_request(key, v, &splice(&body, &before, &prefix, &after, &minus_two))
                            .unwrap_err();
                    assert!(
                        matches!(err, WireError::NegativeLength { len: -2, .. })
                            && path_of(&err) == path,
                        "API {key} v{v}: {err}"
                    );
                }
                cases += 1;
            }
        }
        assert!(cases > 80, "{cases}");
    }

    #[test]
    fn nulls_only_where_nullable() {
        // Metadata topics: not nullable in v0, nullable from v1.
        let null_array = (-1_i32).to_be_bytes();
        assert_eq!(
            check_request(3, 0, &null_array),
            Err(WireError::UnexpectedNull {
                path: "topics".into(),
                kind: "array"
            })
        );
        assert_eq!(check_request(3, 1, &null_array), Ok(()));
        // Compact null (0) in v9+.
        assert_eq!(check_request(3, 9, &[0, 1, 0, 0, 0]), Ok(()));
        // Produce topic name: never nullable.
        let mut body = vec![0xff, 0xff, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        body.extend((-1_i16).to_be_bytes());
        body.extend(0_i32.to_be_bytes());
        assert_eq!(
            check_request(0, 3, &body),
            Err(WireError::UnexpectedNull {
                path: "topic_data[0].name".into(),
                kind: "string"
            })
        );
    }

    #[test]
    fn element_counts_are_weighed_by_their_smallest_size() {
        // Metadata v4: 3 topics of at least 2 bytes each cannot fit in 5 bytes.
        let body = [0, 0, 0, 3, 0, 0, 0, 0, 0];
        let err = check_request(3, 4, &body).unwrap_err();
        assert_eq!(
            err,
            WireError::TooMany {
                path: "topics".into(),
                what: "array elements",
                count: 3,
                needed: 6,
                remaining: 5,
            }
        );
    }

    #[test]
    fn tagged_sections_are_checked() {
        // Fetch v12, no topics, with the known cluster_id tag (0) and an unknown tag.
        let head = {
            let mut h = Vec::new();
            h.extend((-1_i32).to_be_bytes()); // replica_id
            h.extend(500_i32.to_be_bytes()); // max_wait_ms
            h.extend(1_i32.to_be_bytes()); // min_bytes
            h.extend(1_i32.to_be_bytes()); // max_bytes
            h.push(0); // isolation_level
            h.extend(0_i32.to_be_bytes()); // session_id
            h.extend((-1_i32).to_be_bytes()); // session_epoch
            h.extend([1, 1, 1]); // topics, forgotten_topics_data, rack_id: empty
            h
        };
        let with = |tagged: &[u8]| [&head[..], tagged].concat();
        let cluster = [0x04, b'a', b'b', b'c'];
        let ok = with(&[&[2, 0, 4][..], &cluster, &[7, 2, 0xaa, 0xbb]].concat());
        assert_eq!(check_request(1, 12, &ok), Ok(()));
        assert!(kp_decodes(1, 12, &ok));
        // A null cluster_id is allowed.
        assert_eq!(check_request(1, 12, &with(&[1, 0, 1, 0])), Ok(()));
        // The value must fill its declared size exactly: kafka-protocol ignores the size
        // of known tags and would read on out of step.
        let long = with(&[&[1, 0, 5][..], &cluster, &[0]].concat());
        assert_eq!(
            check_request(1, 12, &long),
            Err(WireError::TaggedFieldSize {
                path: "cluster_id".into(),
                tag: 0,
                declared: 5,
                used: 4,
            })
        );
        let short = with(&[&[1, 0, 3][..], &cluster].concat());
        assert!(matches!(
            check_request(1, 12, &short),
            Err(WireError::TooLong { kind: "string", .. })
        ));
        // Unknown tags: the size must fit.
        assert_eq!(
            check_request(1, 12, &with(&[1, 9, 0x7f, 1, 2])),
            Err(WireError::TooLong {
                path: "tagged_fields[tag 9]".into(),
                kind: "tagged field",
                len: 127,
                remaining: 2,
            })
        );
        // The count must fit (each entry takes at least 2 bytes).
        assert!(matches!(
            check_request(1, 12, &with(&[0xff, 0xff, 0xff, 0xff, 0x0f])),
            Err(WireError::TooMany {
                what: "tagged fields",
                ..
            })
        ));
        assert!(matches!(
            check_request(1, 12, &with(&[2, 9, 0])),
            Err(WireError::TooMany {
                what: "tagged fields",
                ..
            })
        ));
        // Nested sections are checked too: a Metadata v9 topic with a bad tag size.
        let body = [2, 2, b'x', 1, 1, 5, 0, 0, 0];
        assert_eq!(
            check_request(3, 9, &body),
            Err(WireError::TooLong {
                path: "topics[0].tagged_fields[tag 1]".into(),
                kind: "tagged field",
                len: 5,
                remaining: 3,
            })
        );
    }

    #[test]
    fn error_messages_name_the_field() {
        // Produce v3: one topic "t" whose partition count is huge.
        let mut body = vec![0xff, 0xff, 0, 1, 0, 0, 0, 0];
        body.extend(1_i32.to_be_bytes());
        body.extend([0, 1, b't']);
        body.extend(54_265_856_i32.to_be_bytes());
        body.extend([0; 5]);
        assert_eq!(
            check_request(0, 3, &body).unwrap_err().to_string(),
            "topic_data[0].partition_data: array length 54265856 exceeds 5 remaining bytes"
        );
        assert_eq!(
            check_request(0, 3, &[0xff]).unwrap_err().to_string(),
            "transactional_id: needs 2 bytes, 1 remaining"
        );
        assert_eq!(
            WireError::TrailingBytes { count: 2 }.to_string(),
            "2 trailing bytes after the request body"
        );
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// A byte biased towards the values that make interesting lengths.
        fn byte(&mut self) -> u8 {
            match self.below(4) {
                0 => [0x00, 0x01, 0x7f, 0x80, 0xff][self.below(5)],
                _ => self.next() as u8,
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let keys: Vec<(i16, i16)> = all_versions(&COVERED).collect();
        let mut accepted = 0;
        for _ in 0..50_000 {
            let (key, v) = keys[rng.below(keys.len())];
            let len = rng.below(64);
            let body: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            if check_request(key, v, &body).is_ok() {
                accepted += 1;
                // Whatever passes must be safe to hand to kafka-protocol.
                let _ = kp_decodes(key, v, &body);
            }
        }
        assert!(accepted > 0);
    }

    #[test]
    fn mutated_requests_never_panic() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let mut accepted = 0;
        for (key, v) in all_versions(&COVERED) {
            for body in samples(key, v) {
                if body.is_empty() {
                    continue;
                }
                for _ in 0..300 {
                    let mut m = body.clone();
                    for _ in 0..=rng.below(3) {
                        match rng.below(4) {
                            0 if m.len() > 1 => {
                                m.remove(rng.below(m.len()));
                            }
                            1 => {
                                let at = rng.below(m.len() + 1);
                                m.insert(at, rng.byte());
                            }
                            _ => {
                                let at = rng.below(m.len());
                                m[at] = rng.byte();
                            }
                        }
                    }
                    if check_request(key, v, &m).is_ok() {
                        accepted += 1;
                        let _ = kp_decodes(key, v, &m);
                    }
                }
            }
        }
        assert!(accepted > 0);
    }
}
