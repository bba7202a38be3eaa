//! Where container names come from (issue 11): the container runtime's API (podman, Docker)
//! and Kubernetes (kubelet or API server). The cgroup path gives a container's id and runtime
//! (`containers`); a [`NameSource`] turns that id into names. Sources are optional and
//! independent: the agent asks each in turn and keeps the first answer per field.

use trafficmap_model::report::ContainerRuntime;

/// Names of one container, as far as one source knows them. Every field is optional: a
/// runtime API knows the container's name, Kubernetes its pod, namespace and workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// Container name (the runtime's, or the container's name in its pod).
    pub name: Option<String>,
    /// Kubernetes pod name.
    pub pod: Option<String>,
    /// Kubernetes namespace.
    pub namespace: Option<String>,
    /// Kind of the owning workload (`Deployment`, `StatefulSet`, `DaemonSet`, `Job`,
    /// `CronJob`, a custom kind, or `Pod` for a bare pod).
    pub workload_kind: Option<String>,
    /// Name of the owning workload (a Deployment's, not its ReplicaSet's).
    pub workload: Option<String>,
}

impl Names {
    /// Fills every field still empty in `self` from `other`.
    pub fn fill_from(&mut self, other: Names) {
        fn fill(a: &mut Option<String>, b: Option<String>) {
            if a.is_none() {
                *a = b;
            }
        }
        fill(&mut self.name, other.name);
        fill(&mut self.pod, other.pod);
        fill(&mut self.namespace, other.namespace);
        fill(&mut self.workload_kind, other.workload_kind);
        fill(&mut self.workload, other.workload);
    }
}

/// A source of container names. Lookups are synchronous and answer from the source's cache
/// (sources refresh themselves in the background), because they run on the drain path: a
/// miss returns `None` at once and may schedule a refresh.
pub trait NameSource: Send + Sync {
    /// Short name for logs and metrics (`podman`, `docker`, `kubelet`, `apiserver`).
    fn kind(&self) -> &'static str;
    /// Names of the container `id` (full hex id) created by `runtime`, if this source knows it.
    fn names(&self, runtime: ContainerRuntime, id: &str) -> Option<Names>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_keeps_the_first_answer_per_field() {
        let mut a = Names {
            name: Some("web".into()),
            ..Names::default()
        };
        a.fill_from(Names {
            name: Some("k8s_web_x".into()),
            pod: Some("web-7d4b9-abcde".into()),
            namespace: Some("shop".into()),
            workload_kind: Some("Deployment".into()),
            workload: Some("web".into()),
        });
        assert_eq!(a.name.as_deref(), Some("web"));
        assert_eq!(a.pod.as_deref(), Some("web-7d4b9-abcde"));
        assert_eq!(a.namespace.as_deref(), Some("shop"));
        assert_eq!(a.workload_kind.as_deref(), Some("Deployment"));
        assert_eq!(a.workload.as_deref(), Some("web"));
    }
}
