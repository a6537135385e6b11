{{/* Names and labels. */}}
{{- define "streamflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "streamflow.fullname" -}}
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

{{- define "streamflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "streamflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "streamflow.labels" -}}
helm.sh/chart: {{ include "streamflow.chart" . }}
{{ include "streamflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: streamflow
{{- end -}}

{{- define "streamflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "streamflow.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "streamflow.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
The topology, parsed. Fails the render when it is missing or not a YAML mapping with a
name and flows. Use as: $topo := include "streamflow.topology" . | fromYaml
*/}}
{{- define "streamflow.topology" -}}
{{- if not (trim .Values.topology) -}}
{{- fail "topology is required: --set-file topology=path/to/integration.yaml (or an inline `topology: |` block)" -}}
{{- end -}}
{{- $t := fromYaml .Values.topology -}}
{{- if hasKey $t "Error" -}}
{{- fail (printf "topology is not valid YAML: %s" (get $t "Error")) -}}
{{- end -}}
{{- if not $t.name -}}
{{- fail "topology has no `name`: is it a StreamFlow integration (kind: Integration)?" -}}
{{- end -}}
{{- if not $t.flows -}}
{{- fail (printf "topology %s has no flows" $t.name) -}}
{{- end -}}
{{- toYaml $t -}}
{{- end -}}

{{/*
Step types that never fail on I/O, so the plan gives them no `.retry` topic (`pure` in
their config model). tests/integration/test_helm.py checks this list against the step
registry: a new pure step type must be added here.
*/}}
{{- define "streamflow.pureStepTypes" -}}
branch filter kafka_publish log transform
{{- end -}}

{{/*
"true" when a flow has a trigger the gateway serves (webhook, schedule, poll, file).
*/}}
{{- define "streamflow.needsGateway" -}}
{{- $topo := include "streamflow.topology" . | fromYaml -}}
{{- range $topo.flows -}}
{{- if and (kindIs "map" .trigger) (has (toString .trigger.type) (list "webhook" "schedule" "poll" "file")) -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the gateway is rendered: gateway.enabled true, or "auto" and a flow needs it.
*/}}
{{- define "streamflow.gatewayEnabled" -}}
{{- $e := .Values.gateway.enabled -}}
{{- if or (eq (toString $e) "true") (and (eq (toString $e) "auto") (include "streamflow.needsGateway" .)) -}}true{{- end -}}
{{- end -}}

{{/*
"true" when the integration is deployed per customer (instances): instances.enabled true,
or "auto" and a flow has a deploy or remove trigger.
*/}}
{{- define "streamflow.instancesEnabled" -}}
{{- $e := toString .Values.instances.enabled -}}
{{- $topo := include "streamflow.topology" . | fromYaml -}}
{{- $auto := "" -}}
{{- range $topo.flows -}}
{{- if and (kindIs "map" .trigger) (has (toString .trigger.type) (list "deploy" "remove")) -}}{{- $auto = "true" -}}{{- end -}}
{{- end -}}
{{- if or (eq $e "true") (and (eq $e "auto") $auto) -}}true{{- end -}}
{{- end -}}

{{/*
Refuse to render what would run but not work: instances without the key that decrypts
their secrets, and service URLs that point a pod at itself (loopback defaults of the
topology's config variables left unset).
*/}}
{{- define "streamflow.checks" -}}
{{- if and (include "streamflow.instancesEnabled" .) (not .Values.secretKey.existingSecret) -}}
{{- fail "instances are enabled (a flow has a deploy or remove trigger, or instances.enabled=true) but secretKey.existingSecret is empty: workers could not decrypt instance secrets and would dead-letter every event. Create a Secret holding `streamflow instance key` and set secretKey.existingSecret (and secretKey.key)" -}}
{{- end -}}
{{- if not .Values.config.existingSecret -}}
{{- $topo := include "streamflow.topology" . | fromYaml -}}
{{- range $name, $var := ($topo.config | default dict) -}}
{{- $default := (kindIs "map" $var) | ternary (get $var "default") "" | toString -}}
{{- if and (regexMatch "^[a-zA-Z][a-zA-Z0-9+.-]*://(127\\.|localhost([:/]|$)|\\[::1\\]|0\\.0\\.0\\.0)" $default) (not (hasKey $.Values.config.values $name)) -}}
{{- fail (printf "config variable %s defaults to %s, a loopback address (inside a pod that is the pod itself): set config.values.%s to the service's URL (or provide config.existingSecret)" $name $default $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Step ids of a list of steps, depth first, including the steps of branch routes and
defaults. Call with (dict "steps" LIST "acc" (dict "ids" list)); the ids end in .acc.ids.
*/}}
{{- define "streamflow.collectStepIds" -}}
{{- $acc := .acc -}}
{{- range .steps -}}
{{- if and (kindIs "map" .) .id -}}
{{- $_ := set $acc "ids" (append $acc.ids .id) -}}
{{- if not (has (toString .type) (include "streamflow.pureStepTypes" $ | splitList " ")) -}}
{{- $_ := set $acc "io" (append ($acc.io | default list) .id) -}}
{{- end -}}
{{- range (.routes | default list) -}}
{{- if kindIs "map" . -}}
{{- include "streamflow.collectStepIds" (dict "steps" (.steps | default list) "acc" $acc) -}}
{{- end -}}
{{- end -}}
{{- include "streamflow.collectStepIds" (dict "steps" (.default | default list) "acc" $acc) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The workers to render, each fully resolved (workerDefaults merged, partitions known,
validated), as a YAML list under `workers`. With an empty .Values.workers, one worker per
flow of the topology. Use as: (include "streamflow.workers" . | fromYaml).workers
*/}}
{{- define "streamflow.workers" -}}
{{- $root := . -}}
{{- $topo := include "streamflow.topology" . | fromYaml -}}
{{- $entries := .Values.workers -}}
{{- if not $entries -}}
{{- $entries = list -}}
{{- range $topo.flows -}}
{{- $entries = append $entries (dict "name" (.name | lower | replace "_" "-" | replace "." "-" | trunc 40 | trimSuffix "-") "flow" .name) -}}
{{- end -}}
{{- end -}}
{{- $out := list -}}
{{- $seen := dict -}}
{{- range $i, $w := $entries -}}
{{- if not $w.name -}}
{{- fail (printf "workers[%d]: name is required" $i) -}}
{{- end -}}
{{- if hasKey $seen $w.name -}}
{{- fail (printf "workers[%d]: duplicate worker name %q" $i $w.name) -}}
{{- end -}}
{{- $_ := set $seen $w.name true -}}
{{- if not $w.flow -}}
{{- fail (printf "workers[%d] (%s): flow is required" $i $w.name) -}}
{{- end -}}
{{- $flow := dict -}}
{{- $names := list -}}
{{- range $topo.flows -}}
{{- $names = append $names .name -}}
{{- if eq .name $w.flow -}}{{- $flow = . -}}{{- end -}}
{{- end -}}
{{- if not $flow -}}
{{- fail (printf "workers[%d] (%s): flow %q is not a flow of integration %s (flows: %s)" $i $w.name $w.flow $topo.name (join ", " $names)) -}}
{{- end -}}
{{- $acc := dict "ids" list "io" list -}}
{{- include "streamflow.collectStepIds" (dict "steps" ($flow.steps | default list) "acc" $acc) -}}
{{- if and $w.step (not (has $w.step $acc.ids)) -}}
{{- fail (printf "workers[%d] (%s): step %q is not a step of flow %s (steps: %s)" $i $w.name $w.step $w.flow (join ", " $acc.ids)) -}}
{{- end -}}
{{- /* mergeOverwrite ignores false/0 overrides: those keys are copied explicitly. */ -}}
{{- $m := mergeOverwrite (deepCopy $root.Values.workerDefaults) (deepCopy $w) -}}
{{- if hasKey $w "replicas" -}}{{- $_ := set $m "replicas" $w.replicas -}}{{- end -}}
{{- range $k := list "pdb" "autoscaling" -}}
{{- $sub := get $w $k | default dict -}}
{{- range $key, $val := $sub -}}
{{- $_ := set (get $m $k) $key $val -}}
{{- end -}}
{{- end -}}
{{- /* The partition count: the flow's `partitions`, else the StreamFlow default of 3. */ -}}
{{- $partitions := int (default 3 $flow.partitions) -}}
{{- $_ := set $m "partitions" $partitions -}}
{{- $_ := set $m "integration" $topo.name -}}
{{- $_ := set $m "stepIds" $acc.ids -}}
{{- /* I/O steps have a .retry topic (read by their worker's retry agent) unless the flow is ordered. */ -}}
{{- $_ := set $m "retrySteps" (ternary (list) $acc.io (eq (toString $flow.ordered) "true")) -}}
{{- $_ := set $m "step" (default "" $w.step) -}}
{{- if gt (int $m.replicas) $partitions -}}
{{- fail (printf "workers[%d] (%s): replicas %d exceeds the %d partitions of flow %s: extra consumers would sit idle" $i $w.name (int $m.replicas) $partitions $w.flow) -}}
{{- end -}}
{{- $as := $m.autoscaling -}}
{{- if not (has $as.type (list "" "keda" "hpa")) -}}
{{- fail (printf "workers[%d] (%s): autoscaling.type must be \"\", \"keda\" or \"hpa\", not %q" $i $w.name $as.type) -}}
{{- end -}}
{{- if $as.type -}}
{{- if gt (int $as.maxReplicas) $partitions -}}
{{- fail (printf "workers[%d] (%s): autoscaling.maxReplicas %d exceeds the %d partitions of flow %s" $i $w.name (int $as.maxReplicas) $partitions $w.flow) -}}
{{- end -}}
{{- if gt (int $as.minReplicas) (int $as.maxReplicas) -}}
{{- fail (printf "workers[%d] (%s): autoscaling.minReplicas exceeds maxReplicas" $i $w.name) -}}
{{- end -}}
{{- if and (eq $as.type "hpa") (lt (int $as.minReplicas) 1) -}}
{{- fail (printf "workers[%d] (%s): an HPA needs autoscaling.minReplicas >= 1 (use keda to scale to zero)" $i $w.name) -}}
{{- end -}}
{{- end -}}
{{- $out = append $out $m -}}
{{- end -}}
{{- toYaml (dict "workers" $out) -}}
{{- end -}}

{{/* The --broker argument: the bootstrap servers come from the environment. */}}
{{- define "streamflow.broker" -}}
kafka://$(STREAMFLOW_KAFKA_BOOTSTRAP_SERVERS)
{{- end -}}

{{/* Fails unless Kafka is configured. */}}
{{- define "streamflow.requireKafka" -}}
{{- if not (or .Values.kafka.bootstrapServers .Values.kafka.existingSecret) -}}
{{- fail "kafka.bootstrapServers or kafka.existingSecret (holding STREAMFLOW_KAFKA_BOOTSTRAP_SERVERS) is required" -}}
{{- end -}}
{{- end -}}

{{/* Environment of every streamflow container (Kafka, secret key, extras). */}}
{{- define "streamflow.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- with .Values.kafka.bootstrapServers }}
- name: STREAMFLOW_KAFKA_BOOTSTRAP_SERVERS
  value: {{ . | quote }}
{{- end }}
{{- range $k, $v := .Values.kafka.settings }}
- name: {{ printf "STREAMFLOW_KAFKA_%s" ($k | upper | replace "." "_") }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Secret key for instance configs (workers and gateway). */}}
{{- define "streamflow.secretKeyEnv" -}}
{{- with .Values.secretKey.existingSecret }}
- name: STREAMFLOW_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.secretKey.key }}
{{- end }}
{{- end -}}

{{- define "streamflow.envFrom" -}}
{{- with .Values.kafka.existingSecret }}
- secretRef:
    name: {{ . }}
{{- end }}
{{- with .Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Arguments carrying config variables (workers and gateway). */}}
{{- define "streamflow.configArgs" -}}
{{- if .Values.config.existingSecret }}
- --config-file
- /etc/streamflow/config/{{ .Values.config.secretKey }}
{{- end }}
{{- range $k, $v := .Values.config.values }}
- --config
- {{ printf "%s=%v" $k $v | quote }}
{{- end }}
{{- end -}}

{{/* Volumes of workers and the gateway; .cm names the topology ConfigMap. */}}
{{- define "streamflow.volumes" -}}
- name: topology
  configMap:
    name: {{ .cm }}
    items:
      - key: topology.yaml
        path: topology.yaml
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- with .root.Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ . }}
{{- end }}
{{- if and .withConfig .root.Values.config.existingSecret }}
- name: config
  secret:
    secretName: {{ .root.Values.config.existingSecret }}
{{- end }}
{{- if .withConfig }}
{{- with .root.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "streamflow.volumeMounts" -}}
- name: topology
  mountPath: /etc/streamflow/topology.yaml
  subPath: topology.yaml
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .root.Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: {{ .root.Values.kafka.tls.mountPath }}
  readOnly: true
{{- end }}
{{- if and .withConfig .root.Values.config.existingSecret }}
- name: config
  mountPath: /etc/streamflow/config
  readOnly: true
{{- end }}
{{- if .withConfig }}
{{- with .root.Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by every pod. */}}
{{- define "streamflow.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* PromQL matchers of the alert rules: this namespace plus the extra selector. */}}
{{- define "streamflow.promScope" -}}
namespace="{{ .Release.Namespace }}"{{ with .Values.prometheusRule.selector }},{{ . }}{{ end }}
{{- end -}}
