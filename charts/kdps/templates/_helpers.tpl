{{/* Chart name. */}}
{{- define "kdps.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, unless the release name already contains the chart name. */}}
{{- define "kdps.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of the operator's objects. */}}
{{- define "kdps.operatorName" -}}
{{- printf "%s-operator" (include "kdps.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Chart label. */}}
{{- define "kdps.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "kdps.labels" -}}
helm.sh/chart: {{ include "kdps.chart" . }}
app.kubernetes.io/part-of: kdps
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of the operator. */}}
{{- define "kdps.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kdps.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* ServiceAccount of the operator. */}}
{{- define "kdps.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kdps.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Operator image. */}}
{{- define "kdps.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Registration service image. */}}
{{- define "kdps.registrationImage" -}}
{{- printf "%s:%s" .Values.registration.image.repository (default .Chart.AppVersion .Values.registration.image.tag) }}
{{- end }}

{{/* Whether leader election is on. */}}
{{- define "kdps.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ else }}false{{ end }}
{{- end }}
