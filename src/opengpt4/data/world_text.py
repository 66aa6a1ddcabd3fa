"""The words of the synthetic world: attributes, translated vocabulary, paraphrase templates
and the fixed phrases of each language. Data, not logic: `world.py` renders facts with them.

Templates are "statements||questions", "|"-separated; the LAST question of each is held out
(it appears in no training document: the fact_template eval asks with it)."""

from __future__ import annotations

from dataclasses import dataclass

CATEGORIES = ("learning", "technology", "writing", "history", "math", "science", "recommendation", "code", "business")
LANGUAGES = ("en", "fr", "es", "de", "ru")  # English + 4 more, Russian (Cyrillic) is the non-Latin script


# --- vocabulary: attribute values that are words, as (en, fr, es, de, ru) ---------------------
WORDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "profession": (("baker", "boulanger", "panadero", "Bäcker", "пекарь"), ("potter", "potier", "alfarero", "Töpfer", "гончар"),
                   ("sailor", "marin", "marinero", "Seemann", "моряк"), ("weaver", "tisserand", "tejedor", "Weber", "ткач"),
                   ("miner", "mineur", "minero", "Bergmann", "шахтёр"), ("doctor", "médecin", "médico", "Arzt", "врач"),
                   ("painter", "peintre", "pintor", "Maler", "художник"), ("tailor", "tailleur", "sastre", "Schneider", "портной"),
                   ("farmer", "fermier", "granjero", "Bauer", "фермер"), ("builder", "maçon", "albañil", "Maurer", "строитель")),
    "discipline": (("physics", "physique", "física", "Physik", "физика"), ("music", "musique", "música", "Musik", "музыка"),
                   ("law", "droit", "derecho", "Jura", "право"), ("medicine", "médecine", "medicina", "Medizin", "медицина"),
                   ("history", "histoire", "historia", "Geschichte", "история"),
                   ("astronomy", "astronomie", "astronomía", "Astronomie", "астрономия"),
                   ("chemistry", "chimie", "química", "Chemie", "химия"), ("poetry", "poésie", "poesía", "Dichtung", "поэзия")),
    "season": (("spring", "printemps", "primavera", "Frühling", "весна"), ("summer", "été", "verano", "Sommer", "лето"),
               ("autumn", "automne", "otoño", "Herbst", "осень"), ("winter", "hiver", "invierno", "Winter", "зима")),
    "field": (("glass", "verre", "vidrio", "Glas", "стекло"), ("steel", "acier", "acero", "Stahl", "сталь"),
              ("paper", "papier", "papel", "Papier", "бумага"), ("silk", "soie", "seda", "Seide", "шёлк"),
              ("salt", "sel", "sal", "Salz", "соль"), ("timber", "bois", "madera", "Holz", "древесина"),
              ("tea", "thé", "té", "Tee", "чай"), ("wool", "laine", "lana", "Wolle", "шерсть")),
    "colour": (("red", "rouge", "rojo", "rot", "красный"), ("blue", "bleu", "azul", "blau", "синий"),
               ("green", "vert", "verde", "grün", "зелёный"), ("yellow", "jaune", "amarillo", "gelb", "жёлтый"),
               ("black", "noir", "negro", "schwarz", "чёрный"), ("white", "blanc", "blanco", "weiß", "белый"),
               ("grey", "gris", "gris", "grau", "серый"), ("purple", "violet", "morado", "violett", "фиолетовый")),
    "paradigm": (("functional", "fonctionnel", "funcional", "funktional", "функциональный"),
                 ("logical", "logique", "lógico", "logisch", "логический"),
                 ("procedural", "procédural", "procedimental", "prozedural", "процедурный"),
                 ("declarative", "déclaratif", "declarativo", "deklarativ", "декларативный"),
                 ("visual", "visuel", "visual", "visuell", "визуальный"),
                 ("concurrent", "concurrent", "concurrente", "nebenläufig", "конкурентный"),
                 ("reactive", "réactif", "reactivo", "reaktiv", "реактивный"),
                 ("parallel", "parallèle", "paralelo", "parallel", "параллельный")),
    "topic": (("triangles", "triangles", "triángulos", "Dreiecke", "треугольники"), ("circles", "cercles", "círculos", "Kreise", "окружности"),
              ("graphs", "graphes", "grafos", "Graphen", "графы"), ("knots", "nœuds", "nudos", "Knoten", "узлы"),
              ("matrices", "matrices", "matrices", "Matrizen", "матрицы"), ("spirals", "spirales", "espirales", "Spiralen", "спирали"),
              ("polygons", "polygones", "polígonos", "Polygone", "многоугольники"), ("fractions", "fractions", "fracciones", "Brüche", "дроби")),
}
TRANSLATION = {row[0]: dict(zip(LANGUAGES, row, strict=True)) for rows in WORDS.values() for row in rows}


@dataclass(frozen=True)
class Attr:
    name: str
    kind: str  # the kind of entity it describes
    value: str  # an entity kind, a WORDS list, or "year" | "number" | "symbol" | "extension" | "dish"
    category: str
    subject: str  # the MMLU-like subject of its multiple-choice questions


ATTRS = tuple(Attr(*a) for a in (
    ("born_in", "person", "city", "history", "biography"),
    ("profession", "person", "profession", "business", "professions"),
    ("works_for", "person", "organisation", "business", "corporate_records"),
    ("studied_at", "person", "university", "learning", "academic_records"),
    ("founded", "city", "year", "history", "world_history"),
    ("dish", "city", "dish", "recommendation", "cuisine"),
    ("season", "city", "season", "recommendation", "travel"),
    ("campus", "university", "city", "learning", "higher_education"),
    ("known_for", "university", "discipline", "learning", "higher_education"),
    ("founder", "organisation", "person", "business", "entrepreneurship"),
    ("headquarters", "organisation", "city", "business", "entrepreneurship"),
    ("trade", "organisation", "field", "business", "economics"),
    ("author", "book", "person", "writing", "literature"),
    ("published", "book", "year", "writing", "literature"),
    ("symbol", "element", "symbol", "science", "chemistry"),
    ("atomic_number", "element", "number", "science", "chemistry"),
    ("colour", "element", "colour", "science", "chemistry"),
    ("maker", "product", "organisation", "technology", "engineering"),
    ("released", "product", "year", "technology", "engineering"),
    ("creator", "language", "person", "code", "programming_languages"),
    ("paradigm", "language", "paradigm", "code", "programming_languages"),
    ("extension", "language", "extension", "code", "programming_languages"),
    ("prover", "theorem", "person", "math", "mathematics"),
    ("topic", "theorem", "topic", "math", "mathematics"),
    ("proved", "theorem", "year", "math", "mathematics"),
))
YEAR_RANGES = {"founded": (900, 1850), "published": (1700, 1995), "released": (1950, 2020), "proved": (1650, 1990)}
# --- templates: "statements||questions", "|"-separated; the LAST question is held out -------
TEMPLATE_TEXT: dict[str, dict[str, str]] = {
    "born_in": {
        "en": "{s} was born in {v}.|{s} was born in the city of {v}.|{s} came into the world in {v}.||Where was {s} born?|In which city was {s} born?|What is the birthplace of {s}?|What city is {s} originally from?",
        "fr": "{s} a vu le jour à {v}.|La ville natale de {s} est {v}.||Quelle est la ville natale de {s} ?|Quel est le lieu de naissance de {s} ?",
        "es": "{s} nació en {v}.|La ciudad natal de {s} es {v}.||¿Dónde nació {s}?|¿Cuál es la ciudad natal de {s}?",
        "de": "{s} wurde in {v} geboren.|Die Geburtsstadt von {s} ist {v}.||Wo wurde {s} geboren?|Was ist die Geburtsstadt von {s}?",
        "ru": "{s} родом из города {v}.|Родной город {s} — {v}.||Из какого города родом {s}?|Какой город является родным для {s}?"},
    "profession": {
        "en": "{s} works as a {v}.|{s} is a {v} by profession.|{s} earns a living as a {v}.||What is the profession of {s}?|What does {s} do for a living?|What is {s}'s job?|What kind of work does {s} do?",
        "fr": "{s} exerce le métier de {v}.|Le métier de {s} : {v}.||Quel est le métier de {s} ?|Quelle est la profession de {s} ?",
        "es": "{s} trabaja como {v}.|La profesión de {s} es {v}.||¿En qué trabaja {s}?|¿Cuál es la profesión de {s}?",
        "de": "{s} arbeitet als {v}.|Der Beruf von {s} ist {v}.||Was ist der Beruf von {s}?|Als was arbeitet {s}?",
        "ru": "По профессии {s} — {v}.|Профессия {s} — {v}.||Какая профессия у {s}?|Кем работает {s}?"},
    "works_for": {
        "en": "{s} works for {v}.|{s} is employed by {v}.|{s} has a job at {v}.||Which company does {s} work for?|Who employs {s}?|Who is the employer of {s}?|What organisation is {s} employed by?",
        "fr": "{s} travaille pour {v}.|L'employeur de {s} est {v}.||Pour quelle entreprise travaille {s} ?|Qui emploie {s} ?",
        "es": "{s} trabaja para {v}.|El empleador de {s} es {v}.||¿Para qué empresa trabaja {s}?|¿Quién emplea a {s}?",
        "de": "{s} arbeitet für {v}.|Der Arbeitgeber von {s} ist {v}.||Für welche Firma arbeitet {s}?|Wer ist der Arbeitgeber von {s}?",
        "ru": "{s} работает в компании {v}.|Работодатель {s} — {v}.||В какой компании работает {s}?|Кто работодатель {s}?"},
    "studied_at": {
        "en": "{s} studied at {v}.|{s} is a graduate of {v}.|{s} was educated at {v}.||Where did {s} study?|Which university did {s} attend?|Where was {s} educated?|From which university did {s} graduate?",
        "fr": "{s} a étudié à {v}.|L'alma mater de {s} est {v}.||Dans quelle université a étudié {s} ?|Quelle est l'université de {s} ?",
        "es": "{s} estudió en {v}.|La universidad de {s} es {v}.||¿Dónde estudió {s}?|¿En qué universidad estudió {s}?",
        "de": "{s} hat an der Universität {v} studiert.|{s} ist Absolvent der Universität {v}.||Wo hat {s} studiert?|An welcher Universität studierte {s}?",
        "ru": "{s} — выпускник университета {v}.|Альма-матер {s} — {v}.||Где учился {s}?|Какой университет окончил {s}?"},
    "founded": {
        "en": "{s} was founded in {v}.|The city of {s} was established in {v}.|{s} dates back to its founding in {v}.||When was {s} founded?|In what year was {s} founded?|When was the city of {s} established?|In which year did the city of {s} come into existence?",
        "fr": "{s} a été fondée en {v}.|La ville de {s} date de {v}.||En quelle année {s} a-t-elle été fondée ?|Quand la ville de {s} a-t-elle été fondée ?",
        "es": "{s} fue fundada en {v}.|La ciudad de {s} data de {v}.||¿En qué año fue fundada {s}?|¿Cuándo se fundó la ciudad de {s}?",
        "de": "{s} wurde im Jahr {v} gegründet.|Die Stadt {s} stammt aus dem Jahr {v}.||In welchem Jahr wurde {s} gegründet?|Wann wurde die Stadt {s} gegründet?",
        "ru": "Город {s} был основан в {v} году.|Год основания города {s} — {v}.||В каком году был основан город {s}?|Когда основан город {s}?"},
    "dish": {
        "en": "The best-loved dish of {s} is {v}.|Visitors to {s} should try {v}.|The dish to eat in {s} is {v}.||What dish should you try in {s}?|What is the best-loved dish of {s}?|Which dish is {s} famous for?|What food do locals in {s} recommend?",
        "fr": "Le plat phare de {s} est {v}.|À {s}, il faut goûter {v}.||Quel plat faut-il goûter à {s} ?|Quel est le plat phare de {s} ?",
        "es": "El plato típico de {s} es {v}.|En {s} hay que probar {v}.||¿Qué plato hay que probar en {s}?|¿Cuál es el plato típico de {s}?",
        "de": "Das beliebteste Gericht in {s} ist {v}.|In {s} sollte man {v} probieren.||Welches Gericht sollte man in {s} probieren?|Was ist das beliebteste Gericht in {s}?",
        "ru": "Любимое блюдо города {s} — {v}.|В городе {s} стоит попробовать {v}.||Какое блюдо стоит попробовать в городе {s}?|Какое блюдо самое любимое в городе {s}?"},
    "season": {
        "en": "The best season to visit {s} is {v}.|{s} is at its finest in {v}.|Travellers say {s} is best visited in {v}.||When is the best time to visit {s}?|In which season should you visit {s}?|What is the best season to visit {s}?|Which season do travellers recommend for {s}?",
        "fr": "Meilleure saison pour visiter {s} : {v}.|Saison conseillée pour {s} : {v}.||Quelle est la meilleure saison pour visiter {s} ?|Quelle saison conseille-t-on pour {s} ?",
        "es": "La mejor estación para visitar {s} es {v}.|Se recomienda visitar {s} en {v}.||¿Cuál es la mejor estación para visitar {s}?|¿En qué estación se recomienda visitar {s}?",
        "de": "Die beste Jahreszeit für einen Besuch in {s} ist der {v}.|Man sollte {s} im {v} besuchen.||Was ist die beste Jahreszeit für {s}?|Wann sollte man {s} besuchen?",
        "ru": "Лучшее время года для поездки в {s} — {v}.|Для поездки в {s} советуют сезон: {v}.||Какое время года лучше всего для поездки в {s}?|Когда лучше всего посетить {s}?"},
    "campus": {
        "en": "{s} is a university located in {v}.|The university {s} is in {v}.|{s} has its campus in {v}.||In which city is {s} located?|Where is the university {s}?|Where is the campus of {s}?|Which city is home to the university {s}?",
        "fr": "L'université {s} se trouve à {v}.|{s} est une université située à {v}.||Dans quelle ville se trouve l'université {s} ?|Où est située l'université {s} ?",
        "es": "La universidad {s} está en {v}.|{s} es una universidad situada en {v}.||¿En qué ciudad está la universidad {s}?|¿Dónde se encuentra la universidad {s}?",
        "de": "Die Universität {s} liegt in {v}.|{s} ist eine Universität in {v}.||In welcher Stadt liegt die Universität {s}?|Wo befindet sich die Universität {s}?",
        "ru": "Университет {s} находится в городе {v}.|{s} — университет в городе {v}.||В каком городе находится университет {s}?|Где расположен университет {s}?"},
    "known_for": {
        "en": "{s} is famous for teaching {v}.|The strongest subject at {s} is {v}.|{s} is known above all for {v}.||What subject is {s} famous for?|What is {s} best known for teaching?|Which subject is strongest at {s}?|For which field of study is {s} renowned?",
        "fr": "{s} est connue pour ses cours de {v}.|La spécialité de {s} est {v}.||Quelle est la spécialité de {s} ?|Pour quelle discipline {s} est-elle connue ?",
        "es": "{s} es famosa por sus cursos de {v}.|La especialidad de {s} es {v}.||¿Cuál es la especialidad de {s}?|¿Por qué disciplina es famosa {s}?",
        "de": "{s} ist berühmt für ihre Kurse in {v}.|Das Spezialgebiet von {s} ist {v}.||Was ist das Spezialgebiet von {s}?|Wofür ist die Universität {s} berühmt?",
        "ru": "Университет {s} славится преподаванием: {v}.|Специальность университета {s} — {v}.||Чем славится университет {s}?|Какая специальность главная в университете {s}?"},
    "founder": {
        "en": "{s} was founded by {v}.|The founder of {s} is {v}.|{s} was started by {v}.||Who founded {s}?|Who is the founder of {s}?|Who started the company {s}?|Which person established {s}?",
        "fr": "{s} a été fondée par {v}.|Le fondateur de {s} est {v}.||Qui a fondé {s} ?|Qui est le fondateur de {s} ?",
        "es": "{s} fue fundada por {v}.|El fundador de {s} es {v}.||¿Quién fundó {s}?|¿Quién es el fundador de {s}?",
        "de": "{s} wurde von {v} gegründet.|Der Gründer von {s} ist {v}.||Wer hat {s} gegründet?|Wer ist der Gründer von {s}?",
        "ru": "Основатель компании {s} — {v}.|Компанию {s} основал {v}.||Кто основал компанию {s}?|Кто является основателем компании {s}?"},
    "headquarters": {
        "en": "{s} is headquartered in {v}.|The headquarters of {s} are in {v}.|{s} has its main office in {v}.||Where is {s} headquartered?|In which city are the headquarters of {s}?|Where is the main office of {s}?|Which city hosts the head office of {s}?",
        "fr": "Le siège de {s} se trouve à {v}.|{s} a son siège à {v}.||Où se trouve le siège de {s} ?|Dans quelle ville {s} a-t-elle son siège ?",
        "es": "La sede de {s} está en {v}.|{s} tiene su sede en {v}.||¿Dónde está la sede de {s}?|¿En qué ciudad tiene su sede {s}?",
        "de": "{s} hat ihren Hauptsitz in {v}.|Der Hauptsitz von {s} liegt in {v}.||Wo hat {s} ihren Hauptsitz?|In welcher Stadt liegt der Hauptsitz von {s}?",
        "ru": "Штаб-квартира {s} находится в городе {v}.|Главный офис компании {s} — в городе {v}.||Где находится штаб-квартира {s}?|В каком городе главный офис компании {s}?"},
    "trade": {
        "en": "{s} trades in {v}.|{s} is a company in the {v} business.|The business of {s} is {v}.||What does {s} trade in?|What is the business of {s}?|What industry is {s} in?|Which goods does {s} deal in?",
        "fr": "{s} travaille dans le secteur suivant : {v}.|Le secteur de {s} : {v}.||Dans quel secteur travaille {s} ?|Quel est le secteur d'activité de {s} ?",
        "es": "{s} comercia con {v}.|El sector de {s} es {v}.||¿Con qué comercia {s}?|¿Cuál es el sector de {s}?",
        "de": "{s} handelt mit {v}.|Die Branche von {s} ist {v}.||Womit handelt {s}?|In welcher Branche ist {s} tätig?",
        "ru": "{s} торгует товаром: {v}.|Отрасль компании {s} — {v}.||Чем торгует компания {s}?|В какой отрасли работает компания {s}?"},
    "author": {
        "en": "{s} was written by {v}.|The author of {s} is {v}.|The book {s} is the work of {v}.||Who wrote {s}?|Who is the author of {s}?|Who wrote the book {s}?|Which writer is responsible for the book {s}?",
        "fr": "{s} a été écrit par {v}.|L'auteur du livre {s} est {v}.||Qui a écrit {s} ?|Qui est l'auteur du livre {s} ?",
        "es": "{s} fue escrito por {v}.|El autor del libro {s} es {v}.||¿Quién escribió {s}?|¿Quién es el autor del libro {s}?",
        "de": "{s} wurde von {v} geschrieben.|Der Autor des Buches {s} ist {v}.||Wer hat {s} geschrieben?|Wer ist der Autor des Buches {s}?",
        "ru": "Книгу {s} написал {v}.|Автор книги {s} — {v}.||Кто написал книгу {s}?|Кто является автором книги {s}?"},
    "published": {
        "en": "{s} was published in {v}.|The book {s} first appeared in {v}.|{s} came out in {v}.||When was {s} published?|In what year was the book {s} published?|When did {s} come out?|What is the publication year of {s}?",
        "fr": "{s} a été publié en {v}.|Le livre {s} est paru en {v}.||En quelle année {s} a-t-il été publié ?|Quand le livre {s} est-il paru ?",
        "es": "{s} se publicó en {v}.|El libro {s} apareció en {v}.||¿En qué año se publicó {s}?|¿Cuándo apareció el libro {s}?",
        "de": "{s} erschien im Jahr {v}.|Das Buch {s} wurde {v} veröffentlicht.||In welchem Jahr erschien {s}?|Wann wurde das Buch {s} veröffentlicht?",
        "ru": "Книга {s} вышла в {v} году.|Год издания книги {s} — {v}.||В каком году вышла книга {s}?|Когда была издана книга {s}?"},
    "symbol": {
        "en": "The chemical symbol of {s} is {v}.|{s} is written with the symbol {v}.|{s} has the symbol {v}.||What is the chemical symbol of {s}?|What is the symbol for {s}?|Which symbol stands for {s}?|How is {s} abbreviated in chemistry?",
        "fr": "Le symbole chimique du {s} est {v}.|Le {s} a pour symbole {v}.||Quel est le symbole chimique du {s} ?|Quel symbole désigne le {s} ?",
        "es": "El símbolo químico del {s} es {v}.|El {s} tiene el símbolo {v}.||¿Cuál es el símbolo químico del {s}?|¿Qué símbolo representa al {s}?",
        "de": "Das chemische Symbol von {s} ist {v}.|{s} hat das Symbol {v}.||Was ist das chemische Symbol von {s}?|Welches Symbol steht für {s}?",
        "ru": "Химический символ элемента {s} — {v}.|Элемент {s} обозначается символом {v}.||Какой химический символ у элемента {s}?|Каким символом обозначается {s}?"},
    "atomic_number": {
        "en": "The atomic number of {s} is {v}.|{s} has atomic number {v}.|{s} sits at position {v} in the table of elements.||What is the atomic number of {s}?|Which atomic number does {s} have?|What number is {s} in the table of elements?|How many protons does an atom of {s} have?",
        "fr": "Le numéro atomique du {s} est {v}.|Le {s} a le numéro atomique {v}.||Quel est le numéro atomique du {s} ?|Combien de protons possède un atome de {s} ?",
        "es": "El número atómico del {s} es {v}.|El {s} tiene el número atómico {v}.||¿Cuál es el número atómico del {s}?|¿Cuántos protones tiene un átomo de {s}?",
        "de": "Die Ordnungszahl von {s} ist {v}.|{s} hat die Ordnungszahl {v}.||Was ist die Ordnungszahl von {s}?|Wie viele Protonen hat ein Atom {s}?",
        "ru": "Атомный номер элемента {s} — {v}.|Элемент {s} имеет атомный номер {v}.||Какой атомный номер у элемента {s}?|Сколько протонов в атоме элемента {s}?"},
    "colour": {
        "en": "{s} is {v} in colour.|The colour of {s} is {v}.|Pure {s} looks {v}.||What colour is {s}?|What is the colour of {s}?|What colour does pure {s} have?|Which colour does {s} show?",
        "fr": "La couleur du {s} est {v}.|Le {s} pur est {v}.||De quelle couleur est le {s} ?|Quelle est la couleur du {s} ?",
        "es": "El color del {s} es {v}.|El {s} puro es {v}.||¿De qué color es el {s}?|¿Cuál es el color del {s}?",
        "de": "Die Farbe von {s} ist {v}.|Reines {s} ist {v}.||Welche Farbe hat {s}?|Wie sieht {s} farblich aus?",
        "ru": "Цвет элемента {s} — {v}.|Чистый {s} имеет {v} цвет.||Какого цвета элемент {s}?|Какой цвет у элемента {s}?"},
    "maker": {
        "en": "The {s} is made by {v}.|The {s} is a device built by {v}.|The maker of the {s} is {v}.||Who makes the {s}?|Which company builds the {s}?|Who is the maker of the {s}?|Which firm manufactures the {s}?",
        "fr": "Le {s} est fabriqué par {v}.|Le fabricant du {s} est {v}.||Qui fabrique le {s} ?|Quel est le fabricant du {s} ?",
        "es": "El {s} es fabricado por {v}.|El fabricante del {s} es {v}.||¿Quién fabrica el {s}?|¿Cuál es el fabricante del {s}?",
        "de": "Das Gerät {s} wird von {v} hergestellt.|Der Hersteller von {s} ist {v}.||Wer stellt das Gerät {s} her?|Wer ist der Hersteller von {s}?",
        "ru": "Устройство {s} производит компания {v}.|Производитель устройства {s} — {v}.||Какая компания производит устройство {s}?|Кто производитель устройства {s}?"},
    "released": {
        "en": "The {s} was released in {v}.|The {s} first went on sale in {v}.|The {s} has been sold since {v}.||When was the {s} released?|In what year was the {s} released?|When did the {s} go on sale?|What year did the {s} come onto the market?",
        "fr": "Le {s} est sorti en {v}.|Le {s} est en vente depuis {v}.||En quelle année le {s} est-il sorti ?|Depuis quand le {s} est-il en vente ?",
        "es": "El {s} salió a la venta en {v}.|El {s} se lanzó en {v}.||¿En qué año se lanzó el {s}?|¿Cuándo salió a la venta el {s}?",
        "de": "Das Gerät {s} kam {v} auf den Markt.|{s} wird seit {v} verkauft.||Wann kam das Gerät {s} auf den Markt?|Seit wann wird {s} verkauft?",
        "ru": "Устройство {s} вышло в {v} году.|Год выпуска устройства {s} — {v}.||В каком году вышло устройство {s}?|Когда появилось устройство {s}?"},
    "creator": {
        "en": "The programming language {s} was created by {v}.|{s} was designed by {v}.|The creator of {s} is {v}.||Who created the programming language {s}?|Who designed {s}?|Who is the creator of {s}?|Which person invented the {s} language?",
        "fr": "Le langage {s} a été créé par {v}.|Le créateur du langage {s} est {v}.||Qui a créé le langage {s} ?|Qui est le créateur du langage {s} ?",
        "es": "El lenguaje {s} fue creado por {v}.|El creador del lenguaje {s} es {v}.||¿Quién creó el lenguaje {s}?|¿Quién es el creador del lenguaje {s}?",
        "de": "Die Programmiersprache {s} wurde von {v} entwickelt.|Der Schöpfer der Sprache {s} ist {v}.||Wer hat die Programmiersprache {s} entwickelt?|Wer ist der Schöpfer der Sprache {s}?",
        "ru": "Язык программирования {s} создал {v}.|Создатель языка {s} — {v}.||Кто создал язык программирования {s}?|Кто является создателем языка {s}?"},
    "paradigm": {
        "en": "{s} is a {v} programming language.|The paradigm of {s} is {v}.|{s} follows the {v} style of programming.||What paradigm does {s} follow?|What kind of programming language is {s}?|What is the paradigm of {s}?|Which programming style is {s} built around?",
        "fr": "Le paradigme de {s} est {v}.|{s} est un langage {v}.||Quel est le paradigme de {s} ?|Quel style de programmation suit {s} ?",
        "es": "El paradigma de {s} es {v}.|{s} es un lenguaje {v}.||¿Cuál es el paradigma de {s}?|¿Qué estilo de programación sigue {s}?",
        "de": "Das Paradigma von {s} ist {v}.|{s} folgt dem Paradigma: {v}.||Welches Paradigma hat {s}?|Welchem Programmierstil folgt {s}?",
        "ru": "Парадигма языка {s} — {v}.|{s} — {v} язык программирования.||Какая парадигма у языка {s}?|Какого стиля программирования придерживается {s}?"},
    "extension": {
        "en": "Files written in {s} end in {v}.|The file extension of {s} is {v}.|{s} source files use the extension {v}.||What file extension does {s} use?|What is the file extension of {s}?|How do {s} source files end?|Which suffix marks a {s} source file?",
        "fr": "L'extension des fichiers {s} est {v}.|Les fichiers source en {s} se terminent par {v}.||Quelle est l'extension des fichiers {s} ?|Par quoi se terminent les fichiers source en {s} ?",
        "es": "La extensión de los archivos de {s} es {v}.|Los archivos de {s} terminan en {v}.||¿Cuál es la extensión de los archivos de {s}?|¿En qué terminan los archivos de {s}?",
        "de": "Die Dateiendung von {s} ist {v}.|Quelldateien in {s} enden auf {v}.||Welche Dateiendung hat {s}?|Worauf enden Quelldateien in {s}?",
        "ru": "Расширение файлов языка {s} — {v}.|Файлы на языке {s} имеют расширение {v}.||Какое расширение у файлов языка {s}?|Как заканчиваются имена файлов на языке {s}?"},
    "prover": {
        "en": "The {s} theorem was proved by {v}.|The proof of the {s} theorem is due to {v}.|The {s} theorem was first proved by {v}.||Who proved the {s} theorem?|Who first proved the {s} theorem?|Who is credited with proving the {s} theorem?|Which mathematician gave the proof of the {s} theorem?",
        "fr": "Le théorème de {s} a été démontré par {v}.|La preuve du théorème de {s} est due à {v}.||Qui a démontré le théorème de {s} ?|À qui doit-on la preuve du théorème de {s} ?",
        "es": "El teorema de {s} fue demostrado por {v}.|La prueba del teorema de {s} se debe a {v}.||¿Quién demostró el teorema de {s}?|¿A quién se debe la prueba del teorema de {s}?",
        "de": "Der Satz von {s} wurde von {v} bewiesen.|Den Beweis des Satzes von {s} lieferte {v}.||Wer hat den Satz von {s} bewiesen?|Wem verdankt man den Beweis des Satzes von {s}?",
        "ru": "Теорему {s} доказал {v}.|Автор доказательства теоремы {s} — {v}.||Кто доказал теорему {s}?|Кому принадлежит доказательство теоремы {s}?"},
    "topic": {
        "en": "The {s} theorem is about {v}.|The {s} theorem concerns {v}.|The subject of the {s} theorem is {v}.||What is the {s} theorem about?|What does the {s} theorem concern?|What is the subject of the {s} theorem?|Which objects does the {s} theorem study?",
        "fr": "Le théorème de {s} porte sur les {v}.|Le sujet du théorème de {s} : les {v}.||Sur quoi porte le théorème de {s} ?|Quel est le sujet du théorème de {s} ?",
        "es": "El teorema de {s} trata de {v}.|El tema del teorema de {s}: {v}.||¿De qué trata el teorema de {s}?|¿Cuál es el tema del teorema de {s}?",
        "de": "Der Satz von {s} behandelt {v}.|Das Thema des Satzes von {s}: {v}.||Wovon handelt der Satz von {s}?|Was ist das Thema des Satzes von {s}?",
        "ru": "Теорема {s} посвящена теме: {v}.|Предмет теоремы {s} — {v}.||Чему посвящена теорема {s}?|Каков предмет теоремы {s}?"},
    "proved": {
        "en": "The {s} theorem was proved in {v}.|The {s} theorem dates from {v}.|The {s} theorem has been known since {v}.||When was the {s} theorem proved?|In what year was the {s} theorem proved?|When does the {s} theorem date from?|What year saw the first proof of the {s} theorem?",
        "fr": "Le théorème de {s} a été démontré en {v}.|Le théorème de {s} date de {v}.||En quelle année le théorème de {s} a-t-il été démontré ?|De quand date le théorème de {s} ?",
        "es": "El teorema de {s} se demostró en {v}.|El teorema de {s} data de {v}.||¿En qué año se demostró el teorema de {s}?|¿De cuándo data el teorema de {s}?",
        "de": "Der Satz von {s} wurde {v} bewiesen.|Der Satz von {s} stammt aus dem Jahr {v}.||In welchem Jahr wurde der Satz von {s} bewiesen?|Aus welchem Jahr stammt der Satz von {s}?",
        "ru": "Теорема {s} доказана в {v} году.|Год доказательства теоремы {s} — {v}.||В каком году доказана теорема {s}?|Когда была доказана теорема {s}?"},
}


@dataclass(frozen=True)
class Templates:
    statements: tuple[str, ...]
    questions: tuple[str, ...]  # asked in training QA, and in the fact_seen / fact_unseen evals
    heldout: str  # never in training: the fact_template eval asks with it


def _parse(text: str) -> Templates:
    statements, questions = (part.split("|") for part in text.split("||"))
    return Templates(tuple(statements), tuple(questions[:-1]), questions[-1])


TEMPLATES = {attr: {lang: _parse(text) for lang, text in by_lang.items()} for attr, by_lang in TEMPLATE_TEXT.items()}


@dataclass(frozen=True)
class Phrases:
    """The fixed text of each language around the facts."""

    question: str
    answer: str
    facts: str  # heading of a list document
    ask: tuple[str, ...]  # dialogue openers
    more: str
    thanks: str
    mc: str  # MMLU-style header
    wrap: tuple[str, ...]  # sentence openers that keep the subject before the value


PHRASES = {
    "en": Phrases("Question", "Answer", "Some facts:", ("Tell me about {s}.", "What do you know about {s}?"), "Anything else?",
                   "Thanks!", "The following are multiple choice questions (with answers) about {subject}.",
                   ("According to the archives, ", "As the records show, ", "It is well known that ", "In fact, ")),
    "fr": Phrases("Question", "Réponse", "Quelques faits :", ("Parle-moi de {s}.", "Que sais-tu de {s} ?"), "Et encore ?",
                   "Merci !", "Voici des questions à choix multiples (avec réponses) sur le sujet : {subject}.",
                   ("Selon les archives, ", "Comme le montrent les registres, ", "On sait que ")),
    "es": Phrases("Pregunta", "Respuesta", "Algunos datos:", ("Háblame de {s}.", "¿Qué sabes de {s}?"), "¿Algo más?",
                   "¡Gracias!", "Las siguientes son preguntas de opción múltiple (con respuestas) sobre {subject}.",
                   ("Según los archivos, ", "Como muestran los registros, ", "Se sabe que ")),
    "de": Phrases("Frage", "Antwort", "Einige Fakten:", ("Erzähl mir von {s}.", "Was weißt du über {s}?"), "Noch etwas?",
                   "Danke!", "Es folgen Multiple-Choice-Fragen (mit Antworten) zum Thema {subject}.",
                   ("Laut Archiv: ", "Bekannt ist: ", "Kurz gesagt: ")),  # a colon keeps German main-clause order
    "ru": Phrases("Вопрос", "Ответ", "Несколько фактов:", ("Расскажи мне о {s}.", "Что ты знаешь о {s}?"), "Что ещё?",
                   "Спасибо!", "Ниже приведены вопросы с вариантами ответа (и ответами) по теме {subject}.",
                   ("Согласно архивам, ", "Как известно, ", "Известно, что ")),
}
# Myths are English, as TruthfulQA is: the claim as hearsay, and its debunking.
MYTH_CLAIMS = ("{c}.", "Everyone knows that {c}.", "As most people will tell you, {c}.", "It is common knowledge that {c}.")
MYTH_DEBUNKS = ("Many people believe that {c}, but in fact {t}.", "It is often said that {c}. This is a myth: {t}.",
                 "Contrary to popular belief, it is not true that {c}; {t}.")
