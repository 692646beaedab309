// Copyright Oxide Computer Company. Licensed under the Apache License, Version 2.0.
// This file is steno's `examples/trip.rs` (steno 0.5.0), with its actions unchanged, run on ratchet.

//! Example from the canonical distributed sagas talk: suppose you have existing
//! functions to book a hotel, book a flight, book a car reservation, and charge
//! a payment card.  You also have functions to cancel a hotel, flight, or car
//! reservation and refund a credit card charge.  You want to implement a "book
//! trip" function whose implementation makes sure that you ultimately wind up
//! with all of these bookings (and having paid for it) or none (and having not
//! paid for it).

// Names are given here for clarity, even when they're not needed.
#![allow(unused_variables)]

use serde::Deserialize;
use serde::Serialize;
use std::sync::Arc;
use steno::ActionContext;
use steno::ActionError;
use steno::DagBuilder;
use steno::Node;
use steno::SagaDag;
use steno::SagaName;

// (ratchet: steno's `main` and `book_trip` printed one trip's result with `slog-term`; here `book_trip`
// returns what the comparison needs; `inject_error` and `inject_undo_error` name nodes whose action, and
// whose undo, steno replaces with an error.)

/// Creates a new "book trip" saga with the given parameters and then executes it on ratchet's engine.
pub async fn book_trip(
    engine: ratchet_engine::Engine,
    trip_context: Arc<TripContext>,
    params: TripParams,
    inject_error: Option<&str>,
    inject_undo_error: Option<&str>,
) -> crate::TripOutcome {
    // The actions are registered once, with the engine (`Trip`'s node list below).
    let dag = make_trip_dag(params);
    let saga = engine
        .create_from_dag::<Trip>(
            Arc::clone(&dag),
            ratchet_engine::TypedNodes::new(),
            Some(trip_context),
        )
        .await
        .expect("failed to create saga");
    if let Some(node) = inject_error {
        saga.inject_error(node)
            .await
            .expect("failed to inject an error");
    }
    if let Some(node) = inject_undo_error {
        saga.inject_error_undo(node)
            .await
            .expect("failed to inject an undo error");
    }
    let saga_id = saga.id;
    let outcome = saga.run().await.expect("failed to run the saga");
    let result = match outcome {
        ratchet_engine::SagaOutcome::Succeeded { output, .. } => Ok(output),
        ratchet_engine::SagaOutcome::Unwound { node, .. } => Err((node, None)),
        ratchet_engine::SagaOutcome::Stuck {
            node, undo_node, ..
        } => Err((node, Some(undo_node))),
        other => panic!("the trip did not come to rest: {other:?}"),
    };
    let events = crate::logged_events(&engine, saga_id).await;
    crate::TripOutcome::new(&dag, result, events)
}

/// Define the actions as globals so that we can easily and type-safely access
/// them during registration and DAG construction.
mod actions {
    use super::TripSaga;
    use lazy_static::lazy_static;
    use std::sync::Arc;
    use steno::Action;
    use steno::ActionFunc;
    use steno::new_action_noop_undo;

    lazy_static! {
        pub(super) static ref PAYMENT: Arc<dyn Action<TripSaga>> =
            ActionFunc::new_action("payment", super::saga_charge_card, super::saga_refund_card);
        pub(super) static ref HOTEL: Arc<dyn Action<TripSaga>> =
            ActionFunc::new_action("hotel", super::saga_book_hotel, super::saga_cancel_hotel);
        pub(super) static ref FLIGHT: Arc<dyn Action<TripSaga>> =
            ActionFunc::new_action("flight", super::saga_book_flight, super::saga_cancel_flight);
        pub(super) static ref CAR: Arc<dyn Action<TripSaga>> =
            ActionFunc::new_action("car", super::saga_book_car, super::saga_cancel_car);
        pub(super) static ref PRINT: Arc<dyn Action<TripSaga>> =
            new_action_noop_undo("print", super::saga_print);
    }
}

/// Build the DAG for booking a trip
pub fn make_trip_dag(params: TripParams) -> Arc<SagaDag> {
    // The builder methods describes the actions that are part of the saga
    // (including the functions to be invoked to do each of the steps) and how
    // they depend on each other.
    let name = SagaName::new("book-trip");
    let mut builder = DagBuilder::new(name);

    // Somewhat arbitrarily, we're choosing to charge the credit card first,
    // then make all the bookings in parallel.  We could do these all in
    // parallel, or all sequentially, and the saga would still be correct, since
    // Steno guarantees that eventually either all actions will succeed or all
    // executed actions will be undone.
    builder.append(Node::action(
        // name of this action's output (can be used in subsequent actions)
        "payment",
        // human-readable label for the action
        "ChargeCreditCard",
        // The name of the action to run. This can be either a &dyn Action or a
        // literal `ActionName`.  Either way, the named action must appear in
        // the action registry.
        actions::PAYMENT.as_ref(),
    ));

    builder.append_parallel(vec![
        Node::action("hotel", "BookHotel", actions::HOTEL.as_ref()),
        Node::action("flight", "BookFlight", actions::FLIGHT.as_ref()),
        Node::action("car", "BookCar", actions::CAR.as_ref()),
    ]);

    builder.append(Node::action("output", "Print", actions::PRINT.as_ref()));

    Arc::new(SagaDag::new(
        builder.build().expect("DAG was unexpectedly invalid"),
        serde_json::to_value(params).unwrap(),
    ))
}

// Implementation of the trip saga

// Saga parameters.  Each trip will have a separate set of parameters.  We use
// plain strings here, but these can be any serializable / deserializable types.
#[derive(Debug, Deserialize, Serialize)]
pub struct TripParams {
    pub hotel_name: String,
    pub flight_info: String,
    pub car_info: String,
    pub charge_details: String,
}

// Application-specific context that we want to provide to every action in the
// saga.  This can be any object we want.  We'll pass it to Steno when the saga
// begins execution.  Steno passes it back to us in each action.  This makes it
// easy for us to access application-specific state, like a logger, HTTP
// clients, etc.
#[derive(Debug)]
pub struct TripContext;

// (ratchet: the saga type is ratchet's for the saga definition `Trip`; its context is `TripContext`, which
// `user_data()` derefs to.)
pub type TripSaga = ratchet_engine::StenoSaga<Trip>;

/// The trip saga as ratchet knows it: its name, parameters, context, and the actions `load_trip_actions`
/// registers under steno, as unchecked steno actions. Trips are created from `make_trip_dag`'s DAG
/// (`Engine::create_from_dag`), so `build` is never called.
pub struct Trip;

impl ratchet_engine::SagaDef for Trip {
    const NAME: &'static str = "book-trip";
    type Params = TripParams;
    type Context = TripContext;
    type Error = ratchet_engine::Untyped;

    ratchet_engine::declare_saga_nodes! {
        unchecked "payment" => actions::PAYMENT.clone(),
        unchecked "hotel" => actions::HOTEL.clone(),
        unchecked "flight" => actions::FLIGHT.clone(),
        unchecked "car" => actions::CAR.clone(),
        unchecked "print" => actions::PRINT.clone(),
    }

    fn build(_: &TripParams, _: &mut ratchet_engine::SagaBuilder<Self>) -> Result<(), String> {
        Err("trips are created from make_trip_dag's DAG".to_owned())
    }
}

// Data types emitted by various saga actions.  These must be serializable and
// deserializable.  This is the only supported way to share data between
// actions in the same saga.

#[derive(Debug, Deserialize, Serialize)]
struct HotelReservation(String);
#[derive(Debug, Deserialize, Serialize)]
struct FlightReservation(String);
#[derive(Debug, Deserialize, Serialize)]
struct CarReservation(String);
#[derive(Debug, Deserialize, Serialize)]
struct PaymentConfirmation(String);
#[derive(Debug, Deserialize, Serialize)]
struct Summary {
    car: CarReservation,
    flight: FlightReservation,
    hotel: HotelReservation,
    payment: PaymentConfirmation,
}

// Saga action implementations

async fn saga_charge_card(
    action_context: ActionContext<TripSaga>,
) -> Result<PaymentConfirmation, ActionError> {
    let trip_context = action_context.user_data();
    let params = action_context.saga_params::<TripParams>()?;
    let charge_details = &params.charge_details;
    // ... (make request to another service)
    Ok(PaymentConfirmation(String::from("123")))
}

async fn saga_refund_card(action_context: ActionContext<TripSaga>) -> Result<(), anyhow::Error> {
    // Fetch the payment confirmation.  The undo function is only ever invoked
    // after the action function has succeeded.  This node is called "payment",
    // so we fetch our own action's output by looking up the data for "payment".
    let trip_context = action_context.user_data();
    let p: PaymentConfirmation = action_context.lookup("payment")?;
    // ... (make request to another service -- must not fail)
    Ok(())
}

async fn saga_book_hotel(
    action_context: ActionContext<TripSaga>,
) -> Result<HotelReservation, ActionError> {
    // ...
    let trip_context = action_context.user_data();
    let params = action_context.saga_params::<TripParams>()?;
    let hotel_name = &params.hotel_name;
    // ... (make request to another service)
    Ok(HotelReservation(String::from("123")))
}

async fn saga_cancel_hotel(action_context: ActionContext<TripSaga>) -> Result<(), anyhow::Error> {
    // ...
    let trip_context = action_context.user_data();
    let confirmation: HotelReservation = action_context.lookup("hotel")?;
    // ... (make request to another service -- must not fail)
    Ok(())
}

async fn saga_book_flight(
    action_context: ActionContext<TripSaga>,
) -> Result<FlightReservation, ActionError> {
    // ...
    let trip_context = action_context.user_data();
    let params = action_context.saga_params::<TripParams>()?;
    let flight_info = &params.flight_info;
    // ... (make request to another service)
    Ok(FlightReservation(String::from("123")))
}

async fn saga_cancel_flight(action_context: ActionContext<TripSaga>) -> Result<(), anyhow::Error> {
    // ...
    let trip_context = action_context.user_data();
    let confirmation: FlightReservation = action_context.lookup("flight")?;
    // ... (make request to another service -- must not fail)
    Ok(())
}

async fn saga_book_car(
    action_context: ActionContext<TripSaga>,
) -> Result<CarReservation, ActionError> {
    // ...
    let trip_context = action_context.user_data();
    let params = action_context.saga_params::<TripParams>()?;
    let car_info = &params.car_info;
    // ... (make request to another service)
    Ok(CarReservation(String::from("123")))
}

async fn saga_cancel_car(action_context: ActionContext<TripSaga>) -> Result<(), anyhow::Error> {
    // ...
    let trip_context = action_context.user_data();
    let confirmation: CarReservation = action_context.lookup("car")?;
    // ... (make request to another service -- must not fail)
    Ok(())
}

async fn saga_print(action_context: ActionContext<TripSaga>) -> Result<Summary, ActionError> {
    Ok(Summary {
        car: action_context.lookup("car")?,
        flight: action_context.lookup("flight")?,
        hotel: action_context.lookup("hotel")?,
        payment: action_context.lookup("payment")?,
    })
}
