//! `#[derive(Schema)]`: describes the archived (rkyv) layout of a struct or
//! enum for Spate's self-describing checkpoints (`spate::schema`).
//!
//! Owns only the code generation: what a schema is, how it is encoded and how
//! it is read back belong to the engine (`spate::schema`), which re-exports
//! this macro as `spate::Schema`. The generated code names the engine by the
//! path `::spate`, so the engine declares `extern crate self as spate`.
//!
//! What the generated `describe` records, and where each figure comes from:
//! - the archived type's size and alignment: `size_of`/`align_of` of
//!   `<Self as rkyv::Archive>::Archived`, computed by the compiler;
//! - a struct's fields: names, their types' schemas, and byte offsets from
//!   `core::mem::offset_of!` on the archived struct (never guessed);
//! - an enum's variants: names, tags (the discriminants rkyv gives its
//!   `#[repr(u8)]` archived enum, reproduced from the declaration) and fields,
//!   whose offsets follow from the layout Rust guarantees for a primitive
//!   representation (each variant a `#[repr(C)]` struct that begins with the
//!   tag), computed by `spate::schema::SchemaBuilder::variant`.
//!
//! Field attributes: `#[schema(as = T)]` describes a field as type `T` (whose
//! archived form must have the field's size and alignment: asserted when the
//! schema is built); a field archived `#[rkyv(with = W)]` is described as its
//! own type when `W` is `AsOwned` (a `Cow` archived as the owned value), and
//! otherwise as opaque bytes of the wrapper's archived size unless
//! `#[schema(as = T)]` says what it is. `#[rkyv(as = ..)]` and
//! `#[rkyv(remote = ..)]` containers are refused: implement `Schema` by hand.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, ToTokens};
use syn::parse::ParseStream;
use syn::{
    parse_macro_input, parse_quote, Data, DeriveInput, Error, Fields, GenericParam, Ident, Index,
    Type,
};

/// Implements `spate::schema::Schema` for a struct or enum that derives
/// rkyv's `Archive` (see the crate documentation).
#[proc_macro_derive(Schema, attributes(schema))]
pub fn derive_schema(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(input) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(mut input: DeriveInput) -> Result<TokenStream2, Error> {
    refuse_container_attributes(&input)?;
    for param in &mut input.generics.params {
        if let GenericParam::Type(t) = param {
            // As rkyv's own derive: a type parameter is archivable.
            t.bounds.push(parse_quote!(::spate::schema::Schema));
            t.bounds
                .push(parse_quote!(::spate::schema::__private::Archive));
        }
    }
    let name = &input.ident;
    let name_text = name.to_string();
    let body = match &input.data {
        Data::Struct(s) => describe_struct(&name_text, &s.fields)?,
        Data::Enum(e) => describe_enum(&name_text, e)?,
        Data::Union(_) => {
            return Err(Error::new_spanned(
                &input.ident,
                "Schema cannot be derived for a union",
            ))
        }
    };
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics ::spate::schema::Schema for #name #ty_generics #where_clause {
            fn describe(
                __b: &mut ::spate::schema::SchemaBuilder,
            ) -> ::spate::schema::TypeDef {
                #body
            }
        }
    })
}

/// `#[rkyv(as = ..)]` and `#[rkyv(remote = ..)]` change what the archived
/// type is in ways the derive cannot see.
fn refuse_container_attributes(input: &DeriveInput) -> Result<(), Error> {
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("rkyv")) {
        let mut refused = None;
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("as") || meta.path.is_ident("remote") {
                refused = Some(meta.path.clone());
            }
            skip_meta_value(meta.input)
        })?;
        if let Some(path) = refused {
            return Err(Error::new_spanned(
                path,
                "#[derive(Schema)] does not support #[rkyv(as)] or #[rkyv(remote)]: implement spate::schema::Schema by hand",
            ));
        }
    }
    Ok(())
}

/// Consumes whatever follows a nested meta's path (`= tokens` up to the next
/// comma, or a parenthesised group), so that unknown keys are skipped.
fn skip_meta_value(input: ParseStream) -> syn::Result<()> {
    if input.peek(syn::Token![=]) {
        let _: syn::Token![=] = input.parse()?;
        while !input.is_empty() && !input.peek(syn::Token![,]) {
            let _: proc_macro2::TokenTree = input.parse()?;
        }
    } else if input.peek(syn::token::Paren) {
        let _: proc_macro2::Group = input.parse()?;
    }
    Ok(())
}

/// The archived type of `Self`, as generated code names it.
fn archived_self() -> TokenStream2 {
    quote! { <Self as ::spate::schema::__private::Archive>::Archived }
}

/// What a field's attributes say about how it is archived.
struct FieldAttributes {
    /// `#[schema(as = T)]`.
    described_as: Option<Type>,
    /// `#[rkyv(with = W)]`.
    with: Option<Type>,
}

fn field_attributes(field: &syn::Field) -> Result<FieldAttributes, Error> {
    let mut out = FieldAttributes {
        described_as: None,
        with: None,
    };
    for attr in &field.attrs {
        if attr.path().is_ident("schema") {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("as") {
                    out.described_as = Some(meta.value()?.parse()?);
                    Ok(())
                } else {
                    Err(meta.error("unknown schema attribute (expected `as = Type`)"))
                }
            })?;
        } else if attr.path().is_ident("rkyv") {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("with") {
                    out.with = Some(meta.value()?.parse()?);
                    Ok(())
                } else {
                    skip_meta_value(meta.input)
                }
            })?;
        }
    }
    Ok(out)
}

/// Whether `ty` is a path whose last segment is `AsOwned`.
fn is_as_owned(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "AsOwned"))
}

/// The expression that adds a field's type to the builder and gives its index.
fn field_type(field: &syn::Field) -> Result<TokenStream2, Error> {
    let attrs = field_attributes(field)?;
    let ty = &field.ty;
    let archived = match &attrs.with {
        Some(with) => {
            quote! { <#with as ::spate::schema::__private::ArchiveWith<#ty>>::Archived }
        }
        None => quote! { <#ty as ::spate::schema::__private::Archive>::Archived },
    };
    Ok(match (&attrs.described_as, &attrs.with) {
        (Some(as_ty), _) => quote! { __b.add_as::<#as_ty, #archived>() },
        (None, Some(with)) if is_as_owned(with) => quote! { __b.add::<#ty>() },
        (None, Some(_)) => {
            let text = ty.to_token_stream().to_string().replace(' ', "");
            quote! { __b.opaque::<#archived>(#text) }
        }
        (None, None) => quote! { __b.add::<#ty>() },
    })
}

/// A field's name in the schema and the member that names it in code.
fn members(fields: &Fields) -> Vec<(String, TokenStream2)> {
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| match &f.ident {
            Some(ident) => (ident.to_string(), ident.to_token_stream()),
            None => (i.to_string(), Index::from(i).to_token_stream()),
        })
        .collect()
}

fn describe_struct(name: &str, fields: &Fields) -> Result<TokenStream2, Error> {
    let archived = archived_self();
    let tuple = matches!(fields, Fields::Unnamed(_));
    let mut entries = Vec::new();
    for (field, (field_name, member)) in fields.iter().zip(members(fields)) {
        let ty = field_type(field)?;
        entries.push(quote! {
            ::spate::schema::Field::new(
                #field_name,
                #ty,
                ::core::mem::offset_of!(#archived, #member),
            )
        });
    }
    Ok(quote! {
        let __fields = ::std::vec![#(#entries),*];
        ::spate::schema::TypeDef::of::<#archived>(::spate::schema::Shape::Struct {
            name: ::std::string::String::from(#name),
            tuple: #tuple,
            fields: __fields,
        })
    })
}

fn describe_enum(name: &str, data: &syn::DataEnum) -> Result<TokenStream2, Error> {
    let archived = archived_self();
    let tag = Ident::new("__SchemaTag", Span::call_site());
    // rkyv's archived enum is `#[repr(u8)]` with the declaration's
    // discriminants: the same enum without fields gives the same tags.
    let tags = data.variants.iter().map(|v| {
        let ident = &v.ident;
        match &v.discriminant {
            Some((eq, expr)) => quote! { #ident #eq #expr },
            None => quote! { #ident },
        }
    });
    let tag_enum = if data.variants.is_empty() {
        quote! {}
    } else {
        quote! {
            #[repr(u8)]
            #[allow(dead_code, non_camel_case_types, clippy::enum_variant_names)]
            enum #tag { #(#tags,)* }
        }
    };
    let mut variants = Vec::new();
    for v in &data.variants {
        let ident = &v.ident;
        let variant_name = ident.to_string();
        let tuple = matches!(v.fields, Fields::Unnamed(_));
        let mut fields = Vec::new();
        for (field, (field_name, _)) in v.fields.iter().zip(members(&v.fields)) {
            let ty = field_type(field)?;
            fields.push(quote! { (#field_name, #ty) });
        }
        variants.push(quote! {
            let __fields = ::std::vec![#(#fields),*];
            let __variant = __b.variant(#variant_name, #tag::#ident as u8, #tuple, __fields);
            __variants.push(__variant);
        });
    }
    Ok(quote! {
        #tag_enum
        #[allow(unused_mut)]
        let mut __variants = ::std::vec::Vec::new();
        #(#variants)*
        ::spate::schema::TypeDef::of::<#archived>(::spate::schema::Shape::Enum {
            name: ::std::string::String::from(#name),
            variants: __variants,
        })
    })
}
