{{- define "pgtrickle-relay-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pgtrickle-relay-operator.labels" -}}
app.kubernetes.io/name: pgtrickle-relay-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pgtrickle-relay-operator.selectorLabels" -}}
app.kubernetes.io/name: pgtrickle-relay-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pgtrickle-relay-operator.serviceAccountName" -}}
{{- default (include "pgtrickle-relay-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}
