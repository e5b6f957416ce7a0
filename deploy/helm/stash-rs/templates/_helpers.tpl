{{/* Labels of every object (the plain manifests carry the first two only). */}}
{{- define "stash-rs.labels" -}}
app.kubernetes.io/name: stash
app.kubernetes.io/part-of: stash-rs
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "stash-rs.selector" -}}
app.kubernetes.io/component: operator
app.kubernetes.io/name: stash
{{- end -}}

{{- define "stash-rs.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
