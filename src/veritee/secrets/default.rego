# Veritee's default secret-release policy (docs/secrets.md, "Policies").
#
# The service queries data.veritee.secrets once per release request, with
#
#   input: {"secret": NAME,
#           "module": {"measurement": HEX, "endorsed_names": [NAME, ...]},
#           "platform": {"lifecycle": "emulated" | "debug" | "secured",
#                        "vtee_id": HEX, "vtee_name": NAME, "ueid": HEX, "secure_boot": BOOL,
#                        "rollback_protection": "none" | "host-file" | "rpmb" | "tpm-nv"},
#           "ear": {"status": "affirming" | "warning" | ...}}   (only with trust.verifier)
#   data.allow: the secret's `allow` block from the service configuration
#
# and releases the secret only if `allow` is true. `reasons` explains a refusal to the client.
# Evidence reaches a policy only once its signatures, certificate chain, nonce and boot log
# have been checked: a policy judges genuine claims, it does not have to re-check them.
package veritee.secrets

import rego.v1

default allow := false

allow if {
	module_allowed
	lifecycle_allowed
	vtee_allowed
	ear_allowed
	rollback_allowed
}

# The module: its measurement is listed, or the service's reference values endorse that
# measurement under a listed name. The module token's own name claim is chosen by whoever
# loaded the module, so it never reaches a policy.
module_allowed if input.module.measurement in object.get(data.allow, "measurements", [])

module_allowed if {
	some name in input.module.endorsed_names
	name in object.get(data.allow, "names", [])
}

# The device: "secured" only, unless the secret lists other lifecycles. The emulated TEE
# protects nothing against the administrator of its host, so releasing a secret to it is an
# explicit opt-in (lifecycles: [emulated]).
lifecycles := object.get(data.allow, "lifecycles", ["secured"])

lifecycle_allowed if input.platform.lifecycle in lifecycles

# The virtual TEE: any, unless the secret lists some.
vtee_allowed if not data.allow.vtees

vtee_allowed if input.platform.vtee_name in data.allow.vtees

# Rollback protection: any, unless the secret requires counters the host cannot roll back
# (require_rollback_protection: true). The emulated device's are a file of its user
# ("host-file"): whoever acts as that user can restore older sealed state with them.
rollback_allowed if not data.allow.require_rollback_protection

rollback_allowed if input.platform.rollback_protection in {"rpmb", "tpm-nv"}

# The verifier's result: affirming or warning (or no verifier), unless the secret asks for a
# minimum status. A contraindicated result (a revoked device) is never allowed; the service
# refuses it before any policy runs, this only says so for policies copied from this one.
default ear_status := "absent"

ear_status := input.ear.status

ear_allowed if {
	not data.allow.min_ear_status
	ear_status in {"absent", "affirming", "warning"}
}

ear_allowed if ear_status == "affirming"

ear_allowed if {
	data.allow.min_ear_status == "warning"
	ear_status == "warning"
}

reasons contains msg if {
	not ear_allowed
	not data.allow.min_ear_status
	msg := sprintf("the verifier's result is '%v'", [ear_status])
}

reasons contains msg if {
	not ear_allowed
	data.allow.min_ear_status
	msg := sprintf(
		"the verifier's result is '%v'; the secret needs at least '%v'",
		[ear_status, data.allow.min_ear_status],
	)
}

reasons contains msg if {
	not module_allowed
	msg := sprintf(
		"module %s is not an allowed measurement, and no allowed name endorses it (endorsed names: %v)",
		[input.module.measurement, input.module.endorsed_names],
	)
}

reasons contains msg if {
	not rollback_allowed
	msg := sprintf(
		"the device's rollback protection is '%v'; the secret requires it in hardware (rpmb, tpm-nv)",
		[input.platform.rollback_protection],
	)
}

reasons contains msg if {
	not lifecycle_allowed
	msg := sprintf("device lifecycle '%v' is not allowed (allowed: %v)", [input.platform.lifecycle, lifecycles])
}

reasons contains msg if {
	not vtee_allowed
	msg := sprintf("vTEE '%v' is not allowed (allowed: %v)", [input.platform.vtee_name, data.allow.vtees])
}
