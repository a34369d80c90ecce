//! The tickets domain's own tests, without any store: every rule of the aggregate given/when/
//! then, the stored form of its events and their upcaster, the list read model, the triage
//! reaction, the registration, and that `docs/your-domain.md` quotes this crate verbatim.

use chronicle_kernel::reaction::idempotency_key;
use chronicle_kernel::{index_values, Aggregate, Dispatch, DomainError, DomainEvent, Projection};
use chronicle_kernel::{EventEnvelope, Reaction, Refusal};
use chronicle_testkit::{envelope, envelope_of, given, given_reaction};
use serde_json::{json, Value};
use std::path::Path;
use tickets::{
    domain, Priority, Status, Ticket, TicketCommand, TicketError, TicketEvent, TicketView,
    TicketsByAgent, Triage, TICKET_OPENED,
};

fn opened(priority: Priority) -> TicketEvent {
    TicketEvent::Opened {
        title: "Printer on fire".into(),
        customer: "c-1".into(),
        priority,
    }
}

fn open(priority: Priority) -> TicketCommand {
    TicketCommand::Open {
        title: "Printer on fire".into(),
        customer: "c-1".into(),
        priority,
    }
}

fn assigned(agent: &str) -> TicketEvent {
    TicketEvent::Assigned {
        agent: agent.into(),
    }
}

fn assign(agent: &str) -> TicketCommand {
    TicketCommand::Assign {
        agent: agent.into(),
    }
}

fn closed() -> TicketEvent {
    TicketEvent::Closed {
        resolution: "Replaced the printer".into(),
    }
}

fn close() -> TicketCommand {
    TicketCommand::Close {
        resolution: "Replaced the printer".into(),
    }
}

// ---- The aggregate ------------------------------------------------------------------------

#[test]
fn open_opens_a_ticket() {
    let ticket = given::<Ticket>(&[])
        .when(open(Priority::Urgent))
        .then(&[opened(Priority::Urgent)]);
    assert_eq!(ticket.status, Status::Open);
    assert!(ticket.exists());
    assert_eq!(ticket.agent, None);
}

#[test]
fn priority_defaults_to_normal() {
    let command: TicketCommand = serde_json::from_value(json!({
        "type": "Open", "title": "Printer on fire", "customer": "c-1"
    }))
    .expect("an Open without a priority");
    assert_eq!(command, open(Priority::Normal));
}

#[test]
fn an_open_ticket_cannot_be_opened_again() {
    given::<Ticket>(&[opened(Priority::Low)])
        .when(open(Priority::Low))
        .then_error("ticket_already_open");
}

#[test]
fn commands_to_a_ticket_nobody_opened_are_not_found() {
    for command in [assign("alice"), close()] {
        let e = given::<Ticket>(&[])
            .when(command)
            .then_error("ticket_not_found");
        assert_eq!(e.refusal(), Refusal::NotFound, "404, not 422");
    }
    assert!(!Ticket::default().exists());
}

#[test]
fn assigning_records_the_agent_and_reassigning_moves_it() {
    let ticket = given::<Ticket>(&[opened(Priority::Normal)])
        .when(assign("alice"))
        .then(&[assigned("alice")]);
    assert_eq!(ticket.agent.as_deref(), Some("alice"));
    let ticket = given::<Ticket>(&[opened(Priority::Normal), assigned("alice")])
        .when(assign("bob"))
        .then(&[assigned("bob")]);
    assert_eq!(ticket.agent.as_deref(), Some("bob"));
}

#[test]
fn assigning_the_current_agent_again_records_nothing() {
    given::<Ticket>(&[opened(Priority::Normal), assigned("alice")])
        .when(assign("alice"))
        .then_nothing();
}

#[test]
fn a_closed_ticket_refuses_every_command() {
    let history = [opened(Priority::Normal), assigned("alice"), closed()];
    let ticket = given::<Ticket>(&history[..2])
        .when(close())
        .then(&[closed()]);
    assert_eq!(ticket.status, Status::Closed);
    for command in [open(Priority::Normal), assign("bob"), close()] {
        let e = given::<Ticket>(&history)
            .when(command)
            .then_error("ticket_closed");
        assert_eq!(e.refusal(), Refusal::Rule, "422");
    }
}

#[test]
fn validate_names_the_field() {
    let open_with = |title: &str, customer: &str| TicketCommand::Open {
        title: title.into(),
        customer: customer.into(),
        priority: Priority::Normal,
    };
    let cases = [
        (open_with(" ", "c-1"), "title must not be blank"),
        (
            open_with(&"x".repeat(201), "c-1"),
            "title must have at most 200",
        ),
        (
            open_with("bell\u{7}", "c-1"),
            "title must not contain control",
        ),
        (open_with("Printer", "a b"), "customer \"a b\""),
        (open_with("Printer", ""), "customer"),
        (assign(""), "agent"),
        (assign("team/alice"), "agent \"team/alice\""),
        (assign(&"a".repeat(129)), "agent"),
        (
            TicketCommand::Close {
                resolution: "\t".into(),
            },
            "resolution must not be blank",
        ),
    ];
    for (command, fragment) in cases {
        // validate runs before decide, whatever the state.
        given::<Ticket>(&[opened(Priority::Normal)])
            .when(command)
            .then_invalid(fragment);
    }
    // Line breaks are fine in a resolution.
    given::<Ticket>(&[opened(Priority::Normal)])
        .when(TicketCommand::Close {
            resolution: "Replaced it.\nTested it.".into(),
        })
        .then(&[TicketEvent::Closed {
            resolution: "Replaced it.\nTested it.".into(),
        }]);
}

#[test]
fn unknown_fields_types_and_values_are_refused_when_parsed() {
    let parse = |v: Value| serde_json::from_value::<TicketCommand>(v).map(|_| ());
    let cases = [
        (
            json!({"type": "Assign", "agent": "alice", "agnet": "bob"}),
            "unknown field `agnet`",
        ),
        (json!({"type": "Reopen"}), "unknown variant `Reopen`"),
        (
            json!({"type": "Open", "title": "t", "customer": "c", "priority": "asap"}),
            "unknown variant `asap`",
        ),
        (
            json!({"type": "Open", "customer": "c"}),
            "missing field `title`",
        ),
    ];
    for (body, fragment) in cases {
        let e = parse(body.clone()).expect_err(&body.to_string());
        assert!(e.to_string().contains(fragment), "{body}: {e}");
    }
}

#[test]
fn every_refusal_code_is_documented() {
    let all = [
        TicketError::NotFound,
        TicketError::AlreadyOpen,
        TicketError::Closed,
    ];
    let codes: Vec<&str> = all.iter().map(DomainError::code).collect();
    assert_eq!(codes, TicketError::CODES);
}

// ---- Events and their schema --------------------------------------------------------------

#[test]
fn events_round_trip_through_their_stored_form() {
    let schema = Ticket::schema();
    for event in [opened(Priority::Urgent), assigned("alice"), closed()] {
        let (event_type, data) = (event.event_type(), event.to_data());
        assert!(
            schema.current_version(event_type).is_some(),
            "{event_type} is declared"
        );
        assert_eq!(TicketEvent::from_data(event_type, &data), Ok(event));
    }
    assert_eq!(
        opened(Priority::Urgent).to_data(),
        json!({"title": "Printer on fire", "customer": "c-1", "priority": "urgent"})
    );
    assert_eq!(assigned("alice").to_data(), json!({"agent": "alice"}));
    assert!(TicketEvent::from_data("TicketReopened", &json!({})).is_err());
}

#[test]
fn ticket_opened_v1_is_upcast_to_a_normal_priority() {
    // As stored before priorities existed: schema version 1, no `priority`.
    let v1 = envelope(
        "tickets",
        "t-1",
        1,
        TICKET_OPENED,
        json!({"title": "Printer on fire", "customer": "c-1"}),
    );
    assert_eq!(v1.schema_version, 1);
    let current = Ticket::schema().upcast(v1).expect("upcast");
    assert_eq!(current.schema_version, 2);
    assert_eq!(current.data["priority"], "normal");
    assert_eq!(
        TicketEvent::from_data(&current.event_type, &current.data),
        Ok(opened(Priority::Normal))
    );
    // A v2 event goes through unchanged.
    let v2 = envelope_of::<Ticket>("t-2", 1, &opened(Priority::Urgent));
    assert_eq!(v2.schema_version, 2);
    assert_eq!(Ticket::schema().upcast(v2.clone()).expect("upcast"), v2);
}

// ---- The list read model ------------------------------------------------------------------

/// The document `TicketsByAgent` keeps after `events` of ticket `id`.
fn project(id: &str, events: &[TicketEvent]) -> Value {
    let mut doc: Option<Value> = None;
    for (i, e) in events.iter().enumerate() {
        let env: EventEnvelope = envelope_of::<Ticket>(id, i as u64 + 1, e);
        doc = Some(TicketsByAgent.apply(doc.as_ref(), &env).expect("applies"));
    }
    doc.expect("a document")
}

#[test]
fn tickets_by_agent_keeps_the_view_found_by_agent() {
    let doc = project(
        "t-1",
        &[opened(Priority::Urgent), assigned("alice"), assigned("bob")],
    );
    let view = TicketView {
        id: "t-1".into(),
        title: "Printer on fire".into(),
        customer: "c-1".into(),
        priority: Priority::Urgent,
        status: Status::Open,
        agent: Some("bob".into()),
        version: 3,
    };
    assert_eq!(doc, serde_json::to_value(&view).expect("JSON"));
    assert_eq!(
        index_values(TicketsByAgent.indexes(), &doc),
        [("agent".to_owned(), "bob".to_owned())]
    );
    // An unassigned ticket is in the read model, but not listed under any agent.
    let doc = project("t-2", &[opened(Priority::Low)]);
    assert_eq!(doc["agent"], Value::Null);
    assert!(index_values(TicketsByAgent.indexes(), &doc).is_empty());
    // Closed tickets stay listed under their agent.
    let doc = project("t-3", &[opened(Priority::Low), assigned("alice"), closed()]);
    assert_eq!(
        (&doc["status"], &doc["agent"]),
        (&json!("closed"), &json!("alice"))
    );
}

// ---- The reaction -------------------------------------------------------------------------

#[test]
fn an_urgent_ticket_is_assigned_to_on_call() {
    given_reaction(&Triage)
        .when(&envelope_of::<Ticket>("t-1", 1, &opened(Priority::Urgent)))
        .then(&[Dispatch::to::<Ticket>("t-1", &assign("on-call"))]);
}

#[test]
fn other_tickets_are_left_alone() {
    for priority in [Priority::Low, Priority::Normal] {
        given_reaction(&Triage)
            .when(&envelope_of::<Ticket>("t-1", 1, &opened(priority)))
            .then(&[]);
    }
}

#[test]
fn a_redelivered_opening_assigns_once() {
    let event = envelope_of::<Ticket>("t-1", 1, &opened(Priority::Urgent));
    let once = given_reaction(&Triage).when(&event).outcome().clone();
    let again = given_reaction(&Triage)
        .after(std::slice::from_ref(&event))
        .when(&event)
        .outcome()
        .clone();
    assert_eq!(once, again, "the same event, the same command");
    // Chronicle sends it under a key made of the reaction, the event's stream and version and
    // the command's index: the same on every delivery, so the ticket's idempotency record
    // answers the repeat...
    let key = |stream: &str, version| idempotency_key(Triage::NAME, stream, version, 0);
    let first = key(&event.stream().to_string(), event.version);
    assert!(first.starts_with("ticket_triage:"), "{first}");
    assert_eq!(first, key("tickets/t-1", 1), "every delivery of the event");
    assert_ne!(first, key("tickets/t-2", 1), "another ticket's opening");
    // ...and after the record's retention, decide still records nothing for the same agent.
    given::<Ticket>(&[opened(Priority::Urgent), assigned("on-call")])
        .when(assign("on-call"))
        .then_nothing();
}

// ---- Registration -------------------------------------------------------------------------

#[test]
fn the_domain_registers_cleanly() {
    let d = domain();
    assert_eq!(d.check(), Ok(()));
    assert_eq!(d.aggregate_types().collect::<Vec<_>>(), ["tickets"]);
    assert_eq!(d.read_model_names(), ["tickets_state", "tickets_by_agent"]);
    assert_eq!(d.reaction_names().collect::<Vec<_>>(), ["ticket_triage"]);
}

// ---- The guide ----------------------------------------------------------------------------

/// Every fenced block of `docs/your-domain.md` whose first line is `// examples/tickets/PATH`
/// (or `# examples/tickets/PATH` in TOML) quotes that file: its other lines must appear there,
/// verbatim and as whole lines. Change the file, then paste the block again.
#[test]
fn the_guide_quotes_the_example_verbatim() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let guide = std::fs::read_to_string(root.join("docs/your-domain.md"))
        .expect("reading docs/your-domain.md");
    let mut lines = guide.lines();
    let mut quoted = 0;
    while let Some(line) = lines.next() {
        if !line.starts_with("```") {
            continue;
        }
        // The block up to its closing fence, which `take_while` consumes.
        let block: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        let Some(path) = block
            .first()
            .and_then(|l| l.strip_prefix("// ").or_else(|| l.strip_prefix("# ")))
            .filter(|p| p.starts_with("examples/tickets/"))
        else {
            continue;
        };
        let file = std::fs::read_to_string(root.join(path))
            .unwrap_or_else(|e| panic!("the guide quotes {path}, which does not read: {e}"));
        let body = block[1..].join("\n");
        assert!(
            !body.trim().is_empty() && format!("\n{file}\n").contains(&format!("\n{body}\n")),
            "docs/your-domain.md quotes {path}, which has no such lines (any more):\n{body}"
        );
        quoted += 1;
    }
    assert!(
        quoted >= 10,
        "docs/your-domain.md quotes the example {quoted} times: the convention was dropped?"
    );
}
