// The AgentOS API's types, generated from its OpenAPI document (schema.d.ts), with short names
// for the objects a web app handles most, and the SSE helper.
import type { components } from "./schema";

export type { components, operations, paths } from "./schema";
export { streamEvents, streamNewRun, TERMINAL_TYPES } from "./sse";
export type { NewRun, NewRunOptions, StreamOptions } from "./sse";

type Schemas = components["schemas"];
export type Agent = Schemas["Agent"];
export type Session = Schemas["Session"];
export type Message = Schemas["Message"];
export type Run = Schemas["Run"];
export type ToolCall = Schemas["ToolCall"];
export type Memory = Schemas["Memory"];
export type KnowledgeDocument = Schemas["KnowledgeDocument"];
export type ApiKey = Schemas["ApiKey"];
export type Org = Schemas["Org"];
export type Skill = Schemas["Skill"];
export type ApiError = Schemas["Error"];
export type RunEvent = Schemas["RunEvent"];
export type EventType = RunEvent["type"];
