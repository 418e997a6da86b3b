{{/* Names, labels, images. Every object is <release>-<component>. */}}
{{- define "lf.name" -}}{{ printf "%s-%s" .root.Release.Name .component | trunc 63 | trimSuffix "-" }}{{- end }}

{{- define "lf.selector" -}}
app.kubernetes.io/name: llamafleet
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "lf.labels" -}}
{{ include "lf.selector" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}

{{- define "lf.image" -}}
{{- $i := .root.Values.image -}}
{{- $repo := printf "%s-%s" $i.prefix .component -}}
{{- if $i.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" $i.registry) $repo }}{{ end -}}
{{ printf "%s:%s" $repo $i.tag }}
{{- end }}

{{- define "lf.tokenSecret" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecret }}{{ else }}{{ printf "%s-auth" .Release.Name }}{{ end -}}
{{- end }}

{{/* The work-queue Redis URL as the services read it (llamafleet/redis_urls.py): Sentinel,
an external URL, or the Redis StatefulSet of this release. A password from
redis.passwordSecret enters through $(LLAMAFLEET_REDIS_PASSWORD), set just before. */}}
{{- define "lf.redisUrl" -}}
{{- $r := .Values.redis -}}
{{- $auth := ternary ":$(LLAMAFLEET_REDIS_PASSWORD)@" "" (ne $r.passwordSecret.name "") -}}
{{- if $r.sentinel.addresses -}}
{{ printf "%s://%s%s/%s/%d" (ternary "rediss+sentinel" "redis+sentinel" $r.enableTLS) $auth (join "," $r.sentinel.addresses) $r.sentinel.masterName (int $r.sentinel.db) }}
{{- else if $r.url -}}
{{ $r.url }}
{{- else -}}
{{ printf "redis://%s%s-redis:6379/0" $auth .Release.Name }}
{{- end -}}
{{- end }}

{{- define "lf.redisEnv" -}}
{{- $r := .root.Values.redis -}}
{{- if $r.passwordSecret.name }}
- name: LLAMAFLEET_REDIS_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ $r.passwordSecret.name }}, key: {{ $r.passwordSecret.key }}}}
{{- end }}
{{- if $r.urlSecret.name }}
- name: LLAMAFLEET_{{ upper .component }}_REDIS_URL
  valueFrom: {secretKeyRef: {name: {{ $r.urlSecret.name }}, key: {{ $r.urlSecret.key }}}}
{{- else }}
- name: LLAMAFLEET_{{ upper .component }}_REDIS_URL
  value: {{ include "lf.redisUrl" .root | quote }}
{{- end }}
{{- end }}

{{/* Settings every service takes (services/common/config.py), the token from its Secret, and
mutual TLS from the TLS Secret; LLAMAFLEET_TOKEN / LLAMAFLEET_TLS_* are what a service sends
when it calls another one. */}}
{{- define "lf.commonEnv" -}}
{{- $v := .root.Values -}}
{{- $S := upper .component -}}
- name: LLAMAFLEET_{{ $S }}_HOST
  value: "0.0.0.0"
- name: LLAMAFLEET_{{ $S }}_PORT
  value: {{ .port | quote }}
- name: LLAMAFLEET_{{ $S }}_AUTH_TOKEN
  valueFrom: {secretKeyRef: {name: {{ include "lf.tokenSecret" .root }}, key: token}}
- name: LLAMAFLEET_TOKEN
  valueFrom: {secretKeyRef: {name: {{ include "lf.tokenSecret" .root }}, key: token}}
- name: LLAMAFLEET_{{ $S }}_LOG_LEVEL
  value: {{ $v.settings.logLevel | quote }}
- name: LLAMAFLEET_{{ $S }}_SHUTDOWN_DELAY_S
  value: {{ $v.settings.shutdownDelayS | quote }}
- name: LLAMAFLEET_{{ $S }}_GRACE_S
  value: {{ $v.settings.graceS | quote }}
{{- if $v.tls.enabled }}
- name: LLAMAFLEET_{{ $S }}_TLS_CERT
  value: /etc/llamafleet/tls/tls.crt
- name: LLAMAFLEET_{{ $S }}_TLS_KEY
  value: /etc/llamafleet/tls/tls.key
{{- if $v.tls.requireClientCert }}
- name: LLAMAFLEET_{{ $S }}_TLS_CLIENT_CA
  value: /etc/llamafleet/tls/ca.crt
{{- end }}
- name: LLAMAFLEET_TLS_CA
  value: /etc/llamafleet/tls/ca.crt
- name: LLAMAFLEET_TLS_CERT
  value: /etc/llamafleet/tls/tls.crt
- name: LLAMAFLEET_TLS_KEY
  value: /etc/llamafleet/tls/tls.key
{{- end }}
{{- range $key, $value := .env }}
- name: LLAMAFLEET_{{ $S }}_{{ upper $key }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* gRPC health (grpc.health.v1, which needs no token): the kubelet's own gRPC probe, or
`llamafleet health` inside the pod when the port speaks TLS (the kubelet's probe cannot). */}}
{{- define "lf.probe" -}}
{{- if .root.Values.tls.enabled -}}
exec: {command: [llamafleet, health, --address, {{ printf "127.0.0.1:%v" .port | quote }}]}
{{- else -}}
grpc: {port: {{ .port }}}
{{- end -}}
{{- end }}

{{- define "lf.probes" -}}
startupProbe:  # models load before the service serves
  {{- include "lf.probe" . | nindent 2 }}
  periodSeconds: 5
  failureThreshold: 120
readinessProbe:
  {{- include "lf.probe" . | nindent 2 }}
  periodSeconds: 5
livenessProbe:
  {{- include "lf.probe" . | nindent 2 }}
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 6
{{- end }}

{{/* SIGTERM -> NOT_SERVING -> shutdownDelayS -> graceS for in-flight calls, plus `extra`
(a worker's lease, a job runner's cancel grace) and 10 s of margin. */}}
{{- define "lf.terminationGrace" -}}
{{- $s := .root.Values.settings -}}
{{ add (int $s.shutdownDelayS) (int $s.graceS) (int .extra) 10 }}
{{- end }}

{{- define "lf.podCommon" -}}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.image.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "lf.resources" -}}
{{- $res := deepCopy (default dict .resources) -}}
{{- if and .root.Values.gpu.enabled (gt (int (default 0 .gpus)) 0) -}}
{{- $limits := default dict $res.limits -}}
{{- $_ := set $limits .root.Values.gpu.resourceName (int .gpus) -}}
{{- $_ := set $res "limits" $limits -}}
{{- end -}}
{{- toYaml $res -}}
{{- end }}

{{- define "lf.tlsVolume" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret: {secretName: {{ required "tls.secretName is required with tls.enabled" .Values.tls.secretName }}}
{{- end }}
{{- end }}

{{- define "lf.tlsMount" -}}
{{- if .Values.tls.enabled }}
- {name: tls, mountPath: /etc/llamafleet/tls, readOnly: true}
{{- end }}
{{- end }}

{{- define "lf.modelsVolume" -}}
- name: models
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-models" .Release.Name) .Values.models.existingClaim }}
{{- end }}

{{/* The service's ClusterIP Service: gRPC inside the cluster only (no NodePort, no
LoadBalancer, no hostPort: scaled workers never claim a node's port). */}}
{{- define "lf.grpcService" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "lf.name" . }}
  labels: {{- include "lf.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector: {{- include "lf.selector" . | nindent 4 }}
  ports:
    - {name: grpc, port: {{ .port }}, targetPort: grpc, appProtocol: grpc}
{{- end }}

{{/* One llamafleet container: `python -m services.<component>` (the image's CMD), its port,
its settings, probes on gRPC health, state under /var/lib/llamafleet, models under /models. */}}
{{- define "lf.container" -}}
- name: {{ .component }}
  image: {{ include "lf.image" . }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  ports:
    - {name: grpc, containerPort: {{ .port }}}
  env:
    {{- include "lf.commonEnv" . | nindent 4 }}
    {{- with .extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- include "lf.probes" . | nindent 2 }}
  securityContext: {{- toYaml .root.Values.securityContext | nindent 4 }}
  resources: {{- include "lf.resources" . | nindent 4 }}
  volumeMounts:
    - {name: state, mountPath: /var/lib/llamafleet}
    - {name: models, mountPath: /models, readOnly: {{ .modelsReadOnly }}}
    {{- include "lf.tlsMount" .root | nindent 4 }}
{{- end }}

{{/* A queue worker (rollout, reward): a Deployment whose replica count KEDA owns when
autoscaling is on, a ClusterIP Service for its RPCs, a PodDisruptionBudget. State is a cache of
fetched adapters (sha256-addressed, fetched again when missing): an emptyDir per pod. */}}
{{- define "lf.worker" -}}
{{- $w := index .root.Values .component -}}
{{ include "lf.grpcService" . }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "lf.name" . }}
  labels: {{- include "lf.labels" . | nindent 4 }}
spec:
  {{- if not $w.autoscaling.enabled }}
  replicas: {{ $w.replicas }}
  {{- end }}
  selector:
    matchLabels: {{- include "lf.selector" . | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxUnavailable: 0, maxSurge: 1}
  template:
    metadata:
      labels: {{- include "lf.labels" . | nindent 8 }}
    spec:
      {{- include "lf.podCommon" . | nindent 6 }}
      # a worker drains on SIGTERM: the item in hand is finished within its lease
      terminationGracePeriodSeconds: {{ include "lf.terminationGrace" (dict "root" .root "extra" (div (int $w.leaseMs) 1000)) }}
      containers:
        {{- include "lf.container" . | nindent 8 }}
      volumes:
        - name: state
          emptyDir: {}
        {{- include "lf.modelsVolume" .root | nindent 8 }}
        {{- include "lf.tlsVolume" .root | nindent 8 }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "lf.name" . }}
  labels: {{- include "lf.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ $w.pdb.maxUnavailable }}
  selector:
    matchLabels: {{- include "lf.selector" . | nindent 6 }}
{{- end }}
