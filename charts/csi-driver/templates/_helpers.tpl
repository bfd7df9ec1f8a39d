{{/* Names and labels shared by every object of the release. */}}
{{- define "csi-driver.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "csi-driver.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "csi-driver.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "csi-driver.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The API server address override, for every container that talks to it. */}}
{{- define "csi-driver.apiEnv" -}}
{{- if .Values.kubernetesAPI.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.kubernetesAPI.host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .Values.kubernetesAPI.port | toString | quote }}
{{- end }}
{{- end -}}

{{- define "csi-driver.signingSecret" -}}
{{- .Values.signingKey.existingSecret | default (printf "%s-signing-key" (include "csi-driver.fullname" .)) -}}
{{- end -}}

{{- define "csi-driver.configSecret" -}}
{{- .Values.existingConfigSecret | default (printf "%s-config" (include "csi-driver.fullname" .)) -}}
{{- end -}}

{{- define "csi-driver.terminationGrace" -}}
{{- add (int .Values.shutdownGraceSeconds) 10 -}}
{{- end -}}

{{/* The plugin's configuration file: the user's `config` plus what the chart decides. */}}
{{- define "csi-driver.configFile" -}}
{{- $store := deepCopy .Values.metadataStore -}}
{{- if and (eq (toString $store.storage) "kubernetes") (not (hasKey $store "namespace")) -}}
{{- $_ := set $store "namespace" .Release.Namespace -}}
{{- end -}}
{{- $config := deepCopy .Values.config -}}
{{- $storage := get $config "storage" | default dict -}}
{{- $_ := set $storage "persistence_config" $store -}}
{{- if not (hasKey $storage "file_locks_path") -}}
{{- $_ := set $storage "file_locks_path" "/var/lib/csi-driver/locks" -}}
{{- end -}}
{{- $_ := set $config "storage" $storage -}}
{{- $node := get $config "node" | default dict -}}
{{- $_ := set $node "state_dir" .Values.node.stateDir -}}
{{- $_ := set $node "mount_roots" (list .Values.kubeletDir) -}}
{{- $_ := set $config "node" $node -}}
{{- $_ := set $config "driver_name" .Values.driverName -}}
{{- $_ := set $config "signing_key_file" "/etc/csi-driver/signing/key" -}}
{{- $_ := set $config "shutdown_grace_seconds" .Values.shutdownGraceSeconds -}}
{{- toYaml $config -}}
{{- end -}}
