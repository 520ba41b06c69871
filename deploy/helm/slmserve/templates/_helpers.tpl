{{/* Names, labels and the preset's defaults. */}}

{{- define "slmserve.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "slmserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "slmserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slmserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "slmserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "slmserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "slmserve.image" -}}
{{- $flavour := ternary "cuda" "cpu" (eq .Values.preset "gpu") -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default (printf "%s-%s" .Chart.AppVersion $flavour)) }}
{{- end }}

{{/* Requests and limits: .Values.resources when set, else the preset's. */}}
{{- define "slmserve.resources" -}}
{{- if .Values.resources }}
{{- toYaml .Values.resources }}
{{- else if eq .Values.preset "gpu" }}
requests:
  cpu: "4"
  memory: 8Gi
  nvidia.com/gpu: {{ .Values.gpu.count }}
limits:
  memory: 16Gi
  nvidia.com/gpu: {{ .Values.gpu.count }}
{{- else }}
requests:
  cpu: "2"
  memory: 2Gi
limits:
  memory: 4Gi
{{- end }}
{{- end }}

{{- define "slmserve.claimName" -}}
{{- .Values.modelStorage.persistence.existingClaim | default (printf "%s-models" (include "slmserve.fullname" .)) }}
{{- end }}
