//! Host adapters: the only place in the agent that makes system calls or touches the disk
//! (namespaces, mounts, cgroupfs, seccomp, the image store's files, local state files).
//! Kernel paths (cgroup roots, data dirs) are parameters, so each adapter can be tested on a
//! fake tree. `unsafe` is allowed only here, each block with a `// SAFETY:` comment.

pub mod agentstate;
pub mod alloc;
pub mod capacity;
pub mod caps;
pub mod cgroup;
pub mod container;
pub mod content;
pub mod controller_client;
pub mod deploy_images;
pub mod deploy_runtime;
pub mod image_store;
pub mod metrics_server;
pub mod net;
pub mod node_cert;
pub mod pidlock;
pub mod probe;
pub mod proxy_process;
pub mod registry;
pub mod rootfs;
pub mod seccomp;
pub mod sys;
pub mod traffic;
pub mod unpack;
pub mod usage;
