//! Support tickets: the example domain of `docs/your-domain.md`, which quotes this file.
//!
//! A customer's ticket is opened, assigned to an agent (and reassigned), then closed. Urgent
//! tickets go to the on-call agent as soon as they are opened (the [`Triage`] reaction), and
//! tickets are listed by agent (`GET /tickets?agent=...`, the [`TicketsByAgent`] read model).
//! `TicketOpened` carries one schema evolution: version 1 had no priority.

use chronicle_kernel::reaction::decode;
use chronicle_kernel::{
    Aggregate, Dispatch, Domain, DomainError, DomainEvent, EventEnvelope, EventSchema, Projection,
    Reaction, Refusal,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

// ---- Commands: what clients send ----------------------------------------------------------

/// How soon a ticket needs an answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    /// Assigned to the on-call agent as soon as it is opened.
    Urgent,
}

/// A command to a ticket, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum TicketCommand {
    /// Opens the ticket.
    Open {
        /// What the customer needs, in one line.
        #[schemars(length(min = 1, max = 200))]
        title: String,
        /// The customer's id.
        #[schemars(regex(pattern = "^[A-Za-z0-9._:-]{1,128}$"))]
        customer: String,
        /// `normal` when left out.
        #[serde(default)]
        priority: Priority,
    },
    /// Gives the ticket to an agent; assigning the current agent again changes nothing.
    Assign {
        /// The agent's id.
        #[schemars(regex(pattern = "^[A-Za-z0-9._:-]{1,128}$"))]
        agent: String,
    },
    /// Closes the ticket: no command is accepted after it.
    Close {
        /// How it was solved.
        #[schemars(length(min = 1, max = 2000))]
        resolution: String,
    },
}

// ---- Events: what happened, stored for ever -----------------------------------------------

pub const TICKET_OPENED: &str = "TicketOpened";
pub const TICKET_ASSIGNED: &str = "TicketAssigned";
pub const TICKET_CLOSED: &str = "TicketClosed";

/// A ticket's events. Serde maps them to a stored event's type and data: the variant's name
/// (renamed) is the type, its fields the data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum TicketEvent {
    #[serde(rename = "TicketOpened")]
    Opened {
        title: String,
        customer: String,
        priority: Priority,
    },
    #[serde(rename = "TicketAssigned")]
    Assigned { agent: String },
    #[serde(rename = "TicketClosed")]
    Closed { resolution: String },
}

impl DomainEvent for TicketEvent {
    fn event_type(&self) -> &'static str {
        match self {
            TicketEvent::Opened { .. } => TICKET_OPENED,
            TicketEvent::Assigned { .. } => TICKET_ASSIGNED,
            TicketEvent::Closed { .. } => TICKET_CLOSED,
        }
    }

    fn to_data(&self) -> Value {
        let mut tagged = serde_json::to_value(self).expect("ticket events serialize to JSON");
        tagged["data"].take()
    }

    fn from_data(event_type: &str, data: &Value) -> Result<Self, String> {
        Self::deserialize(json!({ "type": event_type, "data": data })).map_err(|e| e.to_string())
    }
}

// ---- Errors: why a command was refused ----------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("the ticket does not exist: open it first")]
    NotFound,
    #[error("the ticket is already open")]
    AlreadyOpen,
    #[error("the ticket is closed")]
    Closed,
}

impl DomainError for TicketError {
    const CODES: &'static [&'static str] =
        &["ticket_not_found", "ticket_already_open", "ticket_closed"];

    fn code(&self) -> &'static str {
        match self {
            TicketError::NotFound => "ticket_not_found",
            TicketError::AlreadyOpen => "ticket_already_open",
            TicketError::Closed => "ticket_closed",
        }
    }

    fn refusal(&self) -> Refusal {
        match self {
            TicketError::NotFound => Refusal::NotFound,
            _ => Refusal::Rule,
        }
    }
}

// ---- The aggregate: state, validate, decide, evolve ---------------------------------------

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Never served: a ticket nobody opened is 404.
    #[default]
    Unopened,
    Open,
    Closed,
}

/// A ticket's state, folded from its events (and stored in snapshots: see `STATE_VERSION`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ticket {
    pub status: Status,
    pub title: String,
    pub customer: String,
    pub priority: Priority,
    pub agent: Option<String>,
}

impl Aggregate for Ticket {
    const TYPE: &'static str = "tickets";
    const STATE_VERSION: u32 = 1;
    type Command = TicketCommand;
    type Event = TicketEvent;
    type Error = TicketError;
    type View = TicketView;

    fn schema() -> EventSchema {
        EventSchema::new()
            .event(TICKET_OPENED, 2)
            .event(TICKET_ASSIGNED, 1)
            .event(TICKET_CLOSED, 1)
            // Version 1 had no priority: every ticket then was a normal one.
            .upcaster(TICKET_OPENED, 1, |mut data| {
                data.as_object_mut()
                    .ok_or("TicketOpened v1 data is not an object")?
                    .entry("priority")
                    .or_insert_with(|| json!("normal"));
                Ok(data)
            })
    }

    fn validate(command: &TicketCommand) -> Result<(), String> {
        match command {
            TicketCommand::Open {
                title, customer, ..
            } => {
                text("title", title, 200)?;
                id("customer", customer)
            }
            TicketCommand::Assign { agent } => id("agent", agent),
            TicketCommand::Close { resolution } => text("resolution", resolution, 2000),
        }
    }

    fn decide(&self, command: &TicketCommand) -> Result<Vec<TicketEvent>, TicketError> {
        match (self.status, command) {
            (
                Status::Unopened,
                TicketCommand::Open {
                    title,
                    customer,
                    priority,
                },
            ) => Ok(vec![TicketEvent::Opened {
                title: title.clone(),
                customer: customer.clone(),
                priority: *priority,
            }]),
            (Status::Unopened, _) => Err(TicketError::NotFound),
            (Status::Closed, _) => Err(TicketError::Closed),
            (Status::Open, TicketCommand::Open { .. }) => Err(TicketError::AlreadyOpen),
            // A repeat (a client's retry, a reaction's redelivered command) records nothing.
            (Status::Open, TicketCommand::Assign { agent })
                if self.agent.as_deref() == Some(agent.as_str()) =>
            {
                Ok(vec![])
            }
            (Status::Open, TicketCommand::Assign { agent }) => Ok(vec![TicketEvent::Assigned {
                agent: agent.clone(),
            }]),
            (Status::Open, TicketCommand::Close { resolution }) => Ok(vec![TicketEvent::Closed {
                resolution: resolution.clone(),
            }]),
        }
    }

    fn evolve(&mut self, event: &TicketEvent) {
        match event {
            TicketEvent::Opened {
                title,
                customer,
                priority,
            } => {
                self.status = Status::Open;
                self.title = title.clone();
                self.customer = customer.clone();
                self.priority = *priority;
            }
            TicketEvent::Assigned { agent } => self.agent = Some(agent.clone()),
            TicketEvent::Closed { .. } => self.status = Status::Closed,
        }
    }

    fn exists(&self) -> bool {
        self.status != Status::Unopened
    }

    fn view(&self, id: &str, version: u64) -> TicketView {
        TicketView {
            id: id.to_owned(),
            title: self.title.clone(),
            customer: self.customer.clone(),
            priority: self.priority,
            status: self.status,
            agent: self.agent.clone(),
            version,
        }
    }
}

/// `validate`'s check of free text: not blank, at most `max` characters, no control
/// characters but line breaks.
fn text(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{field} must not be blank"));
    }
    if value.chars().count() > max {
        return Err(format!("{field} must have at most {max} characters"));
    }
    if value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(format!("{field} must not contain control characters"));
    }
    Ok(())
}

/// `validate`'s check of a value that names something by id (and is an index key).
fn id(field: &str, value: &str) -> Result<(), String> {
    chronicle_kernel::validate_id(value).map_err(|e| format!("{field} {value:?}: {e}"))
}

/// What clients see of a ticket (`GET /tickets/{id}`, and the documents of
/// `tickets_by_agent`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TicketView {
    pub id: String,
    pub title: String,
    pub customer: String,
    pub priority: Priority,
    /// `open` or `closed` (`unopened` tickets are not served).
    pub status: Status,
    /// The agent working on it; `null` until it is assigned.
    pub agent: Option<String>,
    /// The version of the ticket this view reflects.
    pub version: u64,
}

// ---- A list read model: tickets by agent --------------------------------------------------

/// One document per ticket (its view), found by agent: `GET /tickets?agent=on-call`.
pub struct TicketsByAgent;

impl TicketsByAgent {
    pub const NAME: &'static str = "tickets_by_agent";
}

impl Projection for TicketsByAgent {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn aggregate_type(&self) -> &str {
        Ticket::TYPE
    }

    fn indexes(&self) -> &[&'static str] {
        &["agent"]
    }

    fn document_schema(
        &self,
        generator: &mut schemars::SchemaGenerator,
    ) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<TicketView>())
    }

    fn apply(&self, doc: Option<&Value>, event: &EventEnvelope) -> Result<Value, String> {
        // The document is the ticket's view, whose fields include the state's: read the state
        // back from it, fold the event (already upcast) and store the new view.
        let mut ticket = match doc {
            Some(d) => Ticket::deserialize(d).map_err(|e| format!("stored document: {e}"))?,
            None => Ticket::default(),
        };
        ticket.evolve(&decode::<Ticket>(event)?);
        serde_json::to_value(ticket.view(&event.aggregate_id, event.version))
            .map_err(|e| e.to_string())
    }
}

// ---- A reaction: urgent tickets go to the on-call agent -----------------------------------

/// Assigns every urgent ticket to [`Triage::AGENT`] as soon as it is opened.
pub struct Triage;

impl Triage {
    pub const AGENT: &'static str = "on-call";
}

impl Reaction for Triage {
    /// None: the event alone decides (no `instance`).
    type State = ();
    const NAME: &'static str = "ticket_triage";

    fn subscriptions(&self) -> Vec<(&'static str, &'static str)> {
        vec![(Ticket::TYPE, TICKET_OPENED)]
    }

    fn react(&self, _: &mut (), event: &EventEnvelope) -> Result<Vec<Dispatch>, String> {
        match decode::<Ticket>(event)? {
            TicketEvent::Opened {
                priority: Priority::Urgent,
                ..
            } => Ok(vec![Dispatch::to::<Ticket>(
                &event.aggregate_id,
                &TicketCommand::Assign {
                    agent: Self::AGENT.to_owned(),
                },
            )]),
            _ => Ok(vec![]),
        }
    }
}

// ---- Registration -------------------------------------------------------------------------

/// The tickets domain, as the team's binary and function crates serve it.
pub fn domain() -> Domain {
    Domain::new()
        .aggregate::<Ticket>()
        .list(TicketsByAgent)
        .reaction(Triage)
}
