-- Argo CD health check for Kubetune's kinds (kubetune.dev/v1alpha1): one script for both
-- TunedModel and FineTuningTask, registered under each in argocd-cm (docs/gitops.md).
-- It reads only status.observedGeneration and status.conditions, which the operator
-- writes; tests/helm/test_argocd_health.py runs it against objects from real tasks.
--
-- FineTuningTask
--   Progressing  not yet observed at this generation; pending; trials running; promoting;
--                its TunedModel does not exist (yet)
--   Healthy      Succeeded: the best trial was promoted
--   Degraded     Failed; or InputsReady=False because the spec, the storage settings or an
--                action (S3, Secret, Kubernetes) failed: the message says what to fix
--   Suspended    spec.suspend is set and the task has not finished, or it ended Canceled
-- TunedModel
--   Progressing  not yet observed at this generation
--   Healthy      Ready=True (an iteration is promoted) or no iteration promoted yet (a valid
--                state: tasks start from the base model; Progressing would stall sync waves)
--   Degraded     Ready=False for any other reason
--   (a TunedModel is never Suspended)

local hs = {}

local function condition(conditions, type)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function is_true(conditions, type)
  local c = condition(conditions, type)
  return c ~= nil and c.status == "True"
end

local function message_of(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local status = obj.status
local generation = obj.metadata.generation

if status == nil or status.observedGeneration == nil
    or (generation ~= nil and status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local conditions = status.conditions

if obj.kind == "TunedModel" then
  local ready = condition(conditions, "Ready")
  if ready == nil then
    hs.status = "Progressing"
    hs.message = "Waiting for the Ready condition"
  elseif ready.status == "True" then
    hs.status = "Healthy"
    hs.message = message_of(ready, "An iteration is promoted")
  elseif ready.reason == "NoPromotedIteration" then
    hs.status = "Healthy"
    hs.message = message_of(ready, "No iteration promoted yet")
  else
    hs.status = "Degraded"
    hs.message = message_of(ready, ready.reason)
  end
  return hs
end

-- FineTuningTask: terminal conditions first, as the operator derives status.phase.
if is_true(conditions, "Canceled") then
  hs.status = "Suspended"
  hs.message = message_of(condition(conditions, "Canceled"), "Canceled")
  return hs
end
if is_true(conditions, "Failed") then
  hs.status = "Degraded"
  hs.message = message_of(condition(conditions, "Failed"), "Failed")
  return hs
end
if is_true(conditions, "Succeeded") then
  hs.status = "Healthy"
  hs.message = message_of(condition(conditions, "Succeeded"), "Succeeded")
  return hs
end
if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "Suspended (spec.suspend)"
  return hs
end

local inputs = condition(conditions, "InputsReady")
if inputs ~= nil and inputs.status == "False" then
  if inputs.reason == "ModelNotFound" then
    hs.status = "Progressing"
  else
    hs.status = "Degraded"
  end
  hs.message = message_of(inputs, inputs.reason)
  return hs
end

local running = condition(conditions, "Running")
hs.status = "Progressing"
if running ~= nil and running.status == "True" then
  hs.message = message_of(running, "Trials are running")
else
  hs.message = "Pending"
end
return hs
