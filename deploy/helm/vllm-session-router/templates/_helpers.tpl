{{/* Names, labels and the router's effective settings. */}}

{{- define "vsr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vsr.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "vsr.vllmName" -}}
{{- printf "%s-vllm" (include "vsr.fullname" .) | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "vsr.vllmHeadless" -}}
{{- printf "%s-headless" (include "vsr.vllmName" .) -}}
{{- end -}}

{{- define "vsr.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vsr.labels" -}}
helm.sh/chart: {{ include "vsr.chart" . }}
app.kubernetes.io/name: {{ include "vsr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "vsr.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vsr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: router
{{- end -}}

{{- define "vsr.vllmSelectorLabels" -}}
app.kubernetes.io/name: {{ include "vsr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: vllm
{{- end -}}

{{- define "vsr.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "vsr.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The router's settings as rendered into its config file: router.config, with replicas_dns pointed
at the bundled vLLM headless Service when vLLM is enabled and no replicas were given.
*/}}
{{- define "vsr.routerConfig" -}}
{{- $config := deepCopy .Values.router.config -}}
{{- $static := $config.replica | default list -}}
{{- $dns := $config.replicas_dns | default "" -}}
{{- if and $static $dns -}}
{{- fail "router.config: give replica or replicas_dns, not both" -}}
{{- end -}}
{{- if not (or $static $dns) -}}
{{- if .Values.vllm.enabled -}}
{{- $_ := set $config "replicas_dns" (printf "%s.%s.svc.cluster.local:%d" (include "vsr.vllmHeadless" .) .Release.Namespace (int .Values.vllm.port)) -}}
{{- else -}}
{{- fail "no replicas: set router.config.replica or router.config.replicas_dns, or enable vllm" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.vllm.enabled .Values.vllm.kvEvents.enabled -}}
{{- if not $config.kv_events_port -}}
{{- $_ := set $config "kv_events_port" (int .Values.vllm.kvEvents.port) -}}
{{- end -}}
{{- if not $config.kv_replay_port -}}
{{- $_ := set $config "kv_replay_port" (int .Values.vllm.kvEvents.replayPort) -}}
{{- end -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{- define "vsr.terminationGrace" -}}
{{- add (int .Values.router.preStopSleepSeconds) (ceil .Values.router.config.drain_seconds | int) (int .Values.router.terminationGraceMarginSeconds) -}}
{{- end -}}
